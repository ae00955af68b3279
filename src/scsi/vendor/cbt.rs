//! CBT service actions 00h-02h and the C0h dispatch. (Being written.)
