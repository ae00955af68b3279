//! CBT write lock: service actions 03h-05h and held changes. (Being written.)
