//! Reading an `strace -f -ttt -X raw -xx` log of `gentgt serve` into the
//! file-system operations that decide what a power cut can leave behind.
//!
//! Only names under the data directory are followed. Descriptors are
//! mapped to inodes (openat results, dup/F_DUPFD, close), inodes to names
//! (creates, mkdir, rename, unlink), so a rename moves a file and a write
//! lands on the inode whatever it is called at the time. An operation's
//! place in the order is the line where its result appears (the exit);
//! its entry line is kept too, because an fsync only covers what had
//! completed when it was called.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub type Ino = u32;
/// The data directory: it exists before the trace starts.
pub const ROOT: Ino = 0;
/// A sector: the unit a device writes atomically (torn writes keep or
/// lose whole sectors).
pub const SECTOR: u64 = 512;

#[derive(Clone, Debug)]
pub enum Op {
    /// A new name in directory `dir` (create or mkdir).
    Link {
        dir: Ino,
        name: String,
        ino: Ino,
        is_dir: bool,
    },
    /// Rename inside one directory (gentgt never renames across).
    Rename {
        dir: Ino,
        from: String,
        to: String,
    },
    Unlink {
        dir: Ino,
        name: String,
    },
    Write {
        ino: Ino,
        off: u64,
        data: Vec<u8>,
    },
    SetLen {
        ino: Ino,
        len: u64,
    },
    /// A punched hole (reads as zeros, size kept).
    Zero {
        ino: Ino,
        off: u64,
        len: u64,
    },
    /// fsync (`full`) or fdatasync of a file or directory.
    Sync {
        ino: Ino,
        full: bool,
    },
}

impl Op {
    /// The inode whose sync makes this operation durable.
    pub fn owner(&self) -> Ino {
        match self {
            Op::Link { dir, .. } | Op::Rename { dir, .. } | Op::Unlink { dir, .. } => *dir,
            Op::Write { ino, .. }
            | Op::SetLen { ino, .. }
            | Op::Zero { ino, .. }
            | Op::Sync { ino, .. } => *ino,
        }
    }

    pub fn is_dir_op(&self) -> bool {
        matches!(
            self,
            Op::Link { .. } | Op::Rename { .. } | Op::Unlink { .. }
        )
    }
}

#[derive(Clone, Debug)]
pub struct Event {
    pub op: Op,
    /// Global line positions (entry <= exit).
    pub entry: usize,
    pub exit: usize,
    /// The name the inode had at the time (for reports and mutations).
    pub name: String,
}

/// A parsed trace: events in exit order and the timestamp of every line.
#[derive(Default, Clone)]
pub struct Trace {
    pub events: Vec<Event>,
    /// Timestamp (seconds) of each global line position.
    pub times: Vec<f64>,
}

impl Trace {
    /// The time just after line `pos`: when the next event started (a cut
    /// there is a power loss at that moment; nothing after it happened).
    pub fn time_after(&self, pos: usize) -> f64 {
        self.times.get(pos + 1).copied().unwrap_or(f64::INFINITY)
    }
}

/// Follows names and descriptors across one or more traced processes.
pub struct Parser {
    root: PathBuf,
    names: HashMap<PathBuf, Ino>,
    paths: HashMap<Ino, PathBuf>,
    fds: HashMap<i64, Fd>,
    next_ino: Ino,
    pub trace: Trace,
}

#[derive(Clone)]
struct Fd {
    /// `None`: not a file we follow (sockets are never seen: not traced).
    ino: Option<Ino>,
    path: PathBuf,
    pos: u64,
}

const AT_FDCWD: i64 = -100;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_APPEND: u64 = 0o2000;
const O_ACCMODE: u64 = 3;
const O_TMPFILE_BIT: u64 = 0o20000000;
const FALLOC_FL_PUNCH_HOLE: u64 = 2;
const F_DUPFD: i64 = 0;
const F_DUPFD_CLOEXEC: i64 = 1030;
const AT_REMOVEDIR: u64 = 0x200;

impl Parser {
    pub fn new(data_dir: &Path) -> Parser {
        let mut p = Parser {
            root: data_dir.to_path_buf(),
            names: HashMap::new(),
            paths: HashMap::new(),
            fds: HashMap::new(),
            next_ino: ROOT + 1,
            trace: Trace::default(),
        };
        p.names.insert(data_dir.to_path_buf(), ROOT);
        p.paths.insert(ROOT, data_dir.to_path_buf());
        p
    }

    /// Add the trace of one `gentgt serve` process (its descriptors die
    /// with it; names and inodes carry over to the next run).
    pub fn add_process(&mut self, text: &str, cwd: &Path) -> Result<(), String> {
        self.fds.clear();
        let mut pending: HashMap<u32, (usize, String)> = HashMap::new();
        for line in text.lines() {
            // "PID TIMESTAMP CALL" (strace pads the pid with blanks).
            let Some((pid, rest)) = line.trim_start().split_once(' ') else {
                continue;
            };
            let Some((ts, body)) = rest.trim_start().split_once(' ') else {
                continue;
            };
            let (Ok(pid), Ok(ts)) = (pid.parse::<u32>(), ts.parse::<f64>()) else {
                continue;
            };
            let pos = self.trace.times.len();
            self.trace.times.push(ts);
            if let Some(head) = body.strip_suffix(" <unfinished ...>") {
                pending.insert(pid, (pos, head.to_string()));
                continue;
            }
            let (entry, call) = match body.strip_prefix("<... ") {
                Some(r) => {
                    let Some((_, tail)) = r.split_once(" resumed>") else {
                        continue;
                    };
                    match pending.remove(&pid) {
                        Some((e, head)) => (e, format!("{head}{tail}")),
                        None => continue,
                    }
                }
                None => (pos, body.to_string()),
            };
            self.call(&call, entry, pos, cwd)
                .map_err(|e| format!("trace line {pos}: {e}: {call:.200}"))?;
        }
        Ok(())
    }

    fn call(&mut self, call: &str, entry: usize, exit: usize, cwd: &Path) -> Result<(), String> {
        let Some((name, rest)) = call.split_once('(') else {
            return Ok(());
        };
        // "ARGS) = RET", strace pads short calls: "fsync(4)        = 0".
        let Some((args, ret)) = rest.rsplit_once(" = ") else {
            return Ok(()); // no result (the process died in it)
        };
        let Some(args) = args.trim_end().strip_suffix(')') else {
            return Ok(());
        };
        let ret = ret.split_whitespace().next().unwrap_or("");
        let Some(ret) = num(ret) else { return Ok(()) };
        if ret < 0 {
            return Ok(()); // failed: no effect
        }
        let a = split_args(args);
        let at = |i: usize| -> Result<&str, String> {
            a.get(i)
                .map(String::as_str)
                .ok_or_else(|| format!("argument {i} missing"))
        };
        let n = |i: usize| at(i).and_then(|s| num(s).ok_or_else(|| format!("bad number {s}")));
        let u = |i: usize| n(i).map(|v| v as u64);
        // A directory descriptor: AT_FDCWD however strace spells it.
        let d = |i: usize| {
            at(i).map(|s| {
                num(s)
                    .filter(|v| (0..1 << 31).contains(v))
                    .unwrap_or(AT_FDCWD)
            })
        };
        match name {
            "openat" => {
                let p = self.resolve(d(0)?, &string(at(1)?)?, cwd);
                let mode = a.get(2).and_then(|s| num(s)).unwrap_or(0) as u64;
                self.open(ret, p, mode, entry, exit);
            }
            "creat" => {
                let p = self.resolve(AT_FDCWD, &string(at(0)?)?, cwd);
                self.open(ret, p, O_CREAT | O_TRUNC | 1, entry, exit);
            }
            "write" | "writev" => self.write(n(0)?, None, &bytes(at(1)?)?, ret, entry, exit),
            "pwrite64" => self.write(n(0)?, Some(u(3)?), &bytes(at(1)?)?, ret, entry, exit),
            "pwritev" | "pwritev2" => {
                self.write(n(0)?, Some(u(3)?), &bytes(at(1)?)?, ret, entry, exit)
            }
            "fsync" | "fdatasync" => {
                if let Some(ino) = self.fd_ino(n(0)?) {
                    let full = name == "fsync";
                    self.push(Op::Sync { ino, full }, entry, exit);
                }
            }
            "ftruncate" => {
                if let Some(ino) = self.fd_ino(n(0)?) {
                    self.push(Op::SetLen { ino, len: u(1)? }, entry, exit);
                }
            }
            "fallocate" => {
                let (mode, off, len) = (u(1)?, u(2)?, u(3)?);
                if let Some(ino) = self.fd_ino(n(0)?)
                    && mode & FALLOC_FL_PUNCH_HOLE != 0
                {
                    self.push(Op::Zero { ino, off, len }, entry, exit);
                }
            }
            "lseek" => {
                if let Some(f) = self.fds.get_mut(&n(0)?) {
                    f.pos = ret as u64;
                }
            }
            "close" => {
                self.fds.remove(&n(0)?);
            }
            "dup" | "dup2" | "dup3" => self.dup(n(0)?, ret),
            "fcntl" if matches!(n(1)?, F_DUPFD | F_DUPFD_CLOEXEC) => self.dup(n(0)?, ret),
            "mkdir" => {
                let p = self.resolve(AT_FDCWD, &string(at(0)?)?, cwd);
                self.link(p, true, entry, exit);
            }
            "mkdirat" => {
                let p = self.resolve(d(0)?, &string(at(1)?)?, cwd);
                self.link(p, true, entry, exit);
            }
            "rename" => {
                let from = self.resolve(AT_FDCWD, &string(at(0)?)?, cwd);
                let to = self.resolve(AT_FDCWD, &string(at(1)?)?, cwd);
                self.rename(from, to, entry, exit)?;
            }
            "renameat" | "renameat2" => {
                let from = self.resolve(d(0)?, &string(at(1)?)?, cwd);
                let to = self.resolve(d(2)?, &string(at(3)?)?, cwd);
                self.rename(from, to, entry, exit)?;
            }
            "unlink" => {
                let p = self.resolve(AT_FDCWD, &string(at(0)?)?, cwd);
                self.unlink(p, entry, exit);
            }
            "unlinkat" => {
                let _rmdir = u(2)? & AT_REMOVEDIR != 0;
                let p = self.resolve(d(0)?, &string(at(1)?)?, cwd);
                self.unlink(p, entry, exit);
            }
            _ => {}
        }
        Ok(())
    }

    fn resolve(&self, dirfd: i64, path: &str, cwd: &Path) -> PathBuf {
        let base = match dirfd {
            AT_FDCWD => cwd.to_path_buf(),
            fd => self
                .fds
                .get(&fd)
                .map_or_else(|| cwd.to_path_buf(), |f| f.path.clone()),
        };
        normalize(&base.join(path))
    }

    fn followed(&self, p: &Path) -> bool {
        p.starts_with(&self.root)
    }

    fn push(&mut self, op: Op, entry: usize, exit: usize) {
        let name = self
            .paths
            .get(&op.owner())
            .and_then(|p| p.strip_prefix(&self.root).ok())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.trace.events.push(Event {
            op,
            entry,
            exit,
            name,
        });
    }

    fn open(&mut self, fd: i64, p: PathBuf, flags: u64, entry: usize, exit: usize) {
        let anonymous = flags & O_TMPFILE_BIT != 0;
        let ino = match self.names.get(&p).copied() {
            _ if anonymous || !self.followed(&p) => None,
            Some(ino) => {
                if flags & O_TRUNC != 0 && flags & O_ACCMODE != 0 {
                    self.push(Op::SetLen { ino, len: 0 }, entry, exit);
                }
                Some(ino)
            }
            None if flags & O_CREAT != 0 => self.link(p.clone(), false, entry, exit),
            None => None,
        };
        let pos = match (ino, flags & O_APPEND != 0) {
            (Some(_), true) => u64::MAX, // resolved at the first write
            _ => 0,
        };
        self.fds.insert(fd, Fd { ino, path: p, pos });
    }

    fn link(&mut self, p: PathBuf, is_dir: bool, entry: usize, exit: usize) -> Option<Ino> {
        if !self.followed(&p) || self.names.contains_key(&p) {
            return self.names.get(&p).copied();
        }
        let (Some(dir), Some(name)) = (
            p.parent().and_then(|d| self.names.get(d)).copied(),
            p.file_name().map(|n| n.to_string_lossy().into_owned()),
        ) else {
            return None;
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.names.insert(p.clone(), ino);
        self.paths.insert(ino, p);
        self.push(
            Op::Link {
                dir,
                name,
                ino,
                is_dir,
            },
            entry,
            exit,
        );
        Some(ino)
    }

    fn rename(
        &mut self,
        from: PathBuf,
        to: PathBuf,
        entry: usize,
        exit: usize,
    ) -> Result<(), String> {
        if !self.followed(&from) {
            return Ok(());
        }
        if from.parent() != to.parent() {
            return Err("rename across directories is not modelled".into());
        }
        let Some(dir) = from.parent().and_then(|d| self.names.get(d)).copied() else {
            return Ok(());
        };
        let Some(ino) = self.names.remove(&from) else {
            return Ok(());
        };
        if let Some(old) = self.names.insert(to.clone(), ino) {
            self.paths.remove(&old);
        }
        self.paths.insert(ino, to.clone());
        let leaf = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let (from, to) = (
            leaf(&from).unwrap_or_default(),
            leaf(&to).unwrap_or_default(),
        );
        self.push(Op::Rename { dir, from, to }, entry, exit);
        Ok(())
    }

    fn unlink(&mut self, p: PathBuf, entry: usize, exit: usize) {
        let Some(dir) = p.parent().and_then(|d| self.names.get(d)).copied() else {
            return;
        };
        if let Some(ino) = self.names.remove(&p) {
            self.paths.remove(&ino);
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            self.push(Op::Unlink { dir, name }, entry, exit);
        }
    }

    fn fd_ino(&self, fd: i64) -> Option<Ino> {
        self.fds.get(&fd).and_then(|f| f.ino)
    }

    fn dup(&mut self, old: i64, new: i64) {
        if let Some(f) = self.fds.get(&old).cloned() {
            self.fds.insert(new, f);
        }
    }

    fn write(
        &mut self,
        fd: i64,
        off: Option<u64>,
        data: &[u8],
        ret: i64,
        entry: usize,
        exit: usize,
    ) {
        let Some(f) = self.fds.get_mut(&fd) else {
            return;
        };
        let Some(ino) = f.ino else { return };
        let done = (ret as usize).min(data.len());
        let at = match off {
            Some(o) => o,
            None if f.pos == u64::MAX => {
                // O_APPEND: gentgt opens no followed file that way.
                return;
            }
            None => {
                let at = f.pos;
                f.pos += done as u64;
                at
            }
        };
        let data = data[..done].to_vec();
        self.push(Op::Write { ino, off: at, data }, entry, exit);
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// A number as strace prints it with -X raw: decimal, 0x hex, 0 octal.
fn num(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let v = if let Some(h) = s.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if s.len() > 1 && s.starts_with('0') {
        i64::from_str_radix(&s[1..], 8).ok()?
    } else {
        s.parse().ok()?
    };
    Some(if neg { -v } else { v })
}

/// Split an argument list at top-level commas (not inside quotes,
/// brackets or braces).
fn split_args(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted, mut esc) =
        (Vec::new(), String::new(), 0, false, false);
    for c in s.chars() {
        match c {
            _ if esc => esc = false,
            '\\' if quoted => esc = true,
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => depth += 1,
            ']' | '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Every quoted string in `arg` (one, or an iovec list), decoded and
/// concatenated. With -xx strace prints each byte as \xHH.
fn bytes(arg: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find('"') {
        let body = &rest[start + 1..];
        let end = body.find('"').ok_or("unterminated string")?;
        let s = &body[..end];
        if body[end + 1..].starts_with("...") {
            return Err("string cut short (raise strace -s)".into());
        }
        for hex in s.split("\\x").skip(1) {
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad byte {hex}"))?);
        }
        rest = &body[end + 1..];
    }
    Ok(out)
}

fn string(arg: &str) -> Result<String, String> {
    Ok(String::from_utf8_lossy(&bytes(arg)?).into_owned())
}
