//! The helper processes of the process runtime, and the only unsafe code in
//! the agent: `fork`, and the `pre_exec` hooks that move a child into a pod's
//! namespaces and cgroups between fork and exec.
//!
//! These run as short `mast` subcommands (`pause`, `shim`, `nsexec`) rather
//! than inside the agent, for two reasons: namespace calls like
//! `unshare(CLONE_NEWNS)` need a single-threaded process, and containers must
//! outlive the agent so that a restarted agent adopts them. This is the
//! containerd-shim / conmon design; no maintained crate offers it for plain
//! host processes, so it is written here on top of `nix`.
#![allow(unsafe_code)]

use anyhow::{bail, Context, Result};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// True when this process may create namespaces, mount and write cgroups.
pub fn privileged() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A bind mount into a container's view of the filesystem.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything the shim needs to start one container; the agent writes it as
/// `spec.json` in the container's state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// The pod sandbox (pause) process whose namespaces the container joins.
    pub sandbox_pid: Option<i32>,
    pub mounts: Vec<BindMount>,
    /// cgroup v1 directories the container is placed in.
    pub cgroups: Vec<PathBuf>,
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub tty: bool,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
}

/// How a container ended, as the shim records it in `exit.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Set when the process never started (`StartError`) or was OOM-killed.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub finished_at: String,
}

/// The pid of a process and its start time, which tells a live process from
/// a later one that reused its pid.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcId {
    pub fn of(pid: i32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22 (starttime); the command in field 2 may hold spaces, so
        // count from the closing parenthesis.
        let rest = &stat[stat.rfind(')')? + 2..];
        let start_time = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(Self { pid, start_time })
    }

    /// Still the same process, and not a zombie.
    pub fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let Some(close) = stat.rfind(')') else {
            return false;
        };
        let rest = &stat[close + 2..];
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("Z");
        let start: u64 = f.nth(18).and_then(|s| s.parse().ok()).unwrap_or(0);
        state != "Z" && state != "X" && start == self.start_time
    }

    pub fn signal(&self, sig: Signal) {
        if self.alive() {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), sig);
        }
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}

/// The namespaces of a process, opened so that a child can join them.
struct Namespaces {
    files: Vec<(File, CloneFlags)>,
    pid: File,
}

impl Namespaces {
    fn open(pid: i32) -> Result<Self> {
        let open = |n: &str| {
            File::open(format!("/proc/{pid}/ns/{n}"))
                .with_context(|| format!("opening the {n} namespace of process {pid}"))
        };
        Ok(Self {
            files: vec![
                (open("ipc")?, CloneFlags::CLONE_NEWIPC),
                (open("uts")?, CloneFlags::CLONE_NEWUTS),
                (open("net")?, CloneFlags::CLONE_NEWNET),
                // The mount namespace goes last: after it, /proc paths may
                // no longer name the same things.
                (open("mnt")?, CloneFlags::CLONE_NEWNS),
            ],
            pid: open("pid")?,
        })
    }

    /// Join every namespace but the pid one (which only affects children).
    fn enter(&self) -> std::io::Result<()> {
        for (f, flag) in &self.files {
            setns(f, *flag).map_err(std::io::Error::from)?;
        }
        Ok(())
    }
}

fn join_cgroups(cgroups: &[PathBuf]) -> std::io::Result<()> {
    for cg in cgroups {
        // Writing 0 moves the writing process itself.
        std::fs::write(cg.join("cgroup.procs"), "0")?;
    }
    Ok(())
}

fn make_controlling_tty() -> std::io::Result<()> {
    nix::unistd::setsid().map_err(std::io::Error::from)?;
    nix::ioctl_write_int_bad!(tiocsctty, nix::libc::TIOCSCTTY);
    // SAFETY: fd 0 is the pty slave the parent set as stdin.
    unsafe { tiocsctty(0, 0) }.map_err(std::io::Error::from)?;
    Ok(())
}

/// `mast pause`: create a pod sandbox — new mount, UTS, IPC and pid
/// namespaces, and a network namespace with `net` — and keep it alive as
/// the pod's pid 1, reaping orphans.
/// Writes the sandbox's host pid to `pid_file` once it is ready, then the
/// command itself returns, leaving the sandbox running.
pub fn pause(hostname: &str, pid_file: &Path, net: bool) -> Result<()> {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags)
        .context("creating the pod's namespaces (the process runtime needs root for this)")?;
    let (r, w) = nix::unistd::pipe()?;
    // SAFETY: this process is single-threaded (no runtime was started).
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { .. } => {
            drop(w);
            // The child sends its host pid and start time once it is ready
            // (the parent cannot look: it shares the child's mount
            // namespace, whose /proc now shows the pod's pids).
            let mut buf = vec![];
            let mut f = File::from(r);
            let _ = f.read_to_end(&mut buf);
            let id: ProcId = serde_json::from_slice(&buf).map_err(|_| {
                anyhow::anyhow!("the pod sandbox exited while setting up (see the agent's log)")
            })?;
            write_atomic(pid_file, &serde_json::to_vec(&id)?)?;
            Ok(())
        }
        ForkResult::Child => {
            drop(r);
            let me = std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<i32>().ok())
                .and_then(ProcId::of);
            let setup = || -> Result<()> {
                use nix::mount::{mount, MsFlags};
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .context("making the pod's mounts private")?;
                mount(
                    Some("proc"),
                    "/proc",
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .context("mounting the pod's /proc")?;
                nix::unistd::sethostname(hostname).context("setting the pod's hostname")?;
                let _ = nix::sys::prctl::set_name(c"pause");
                Ok(())
            };
            if let Err(e) = setup() {
                eprintln!("mast pause: {e:#}");
                std::process::exit(1);
            }
            let mut set = SigSet::empty();
            set.add(Signal::SIGCHLD);
            set.add(Signal::SIGTERM);
            let _ = set.thread_block();
            let Some(me) = me else {
                eprintln!("mast pause: cannot read its own pid");
                std::process::exit(1);
            };
            let _ = nix::unistd::write(&w, &serde_json::to_vec(&me).unwrap_or_default());
            drop(w);
            if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
                for fd in 0..3 {
                    // SAFETY: replacing stdio with /dev/null; nothing else
                    // in this process holds fds 0-2.
                    let _ = unsafe { nix::unistd::dup2_raw(&null, fd) };
                }
            }
            loop {
                match set.wait() {
                    Ok(Signal::SIGTERM) => std::process::exit(0),
                    _ => {
                        while let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
                            waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG))
                        {
                        }
                    }
                }
            }
        }
    }
}

/// Where a container's files live: spec.json, pid.json, exit.json.
pub fn spec_path(dir: &Path) -> PathBuf {
    dir.join("spec.json")
}
pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("pid.json")
}
pub fn exit_path(dir: &Path) -> PathBuf {
    dir.join("exit.json")
}

/// `mast shim DIR`: start the container that `DIR/spec.json` describes,
/// copy its output into the log file (CRI format, rotated), wait for it and
/// record how it ended in `DIR/exit.json`.
pub fn shim(dir: &Path) -> Result<()> {
    let spec: ContainerSpec = serde_json::from_slice(
        &std::fs::read(spec_path(dir)).with_context(|| format!("reading {}", dir.display()))?,
    )?;
    let _ = nix::unistd::setsid();
    let finish = |rec: ExitRecord| -> Result<()> {
        write_atomic(&exit_path(dir), &serde_json::to_vec(&rec)?)?;
        Ok(())
    };
    let start_error = |msg: String| ExitRecord {
        exit_code: 128,
        signal: None,
        reason: Some("StartError".into()),
        message: Some(msg),
        finished_at: now_rfc3339(),
    };
    let ns = match spec.sandbox_pid.map(Namespaces::open).transpose() {
        Ok(ns) => ns,
        Err(e) => return finish(start_error(format!("the pod sandbox is gone: {e:#}"))),
    };
    if let Some(ns) = &ns {
        if let Err(e) = setns(&ns.pid, CloneFlags::CLONE_NEWPID) {
            return finish(start_error(format!("joining the pod's pid namespace: {e}")));
        }
    }
    let log = Mutex::new(LogWriter::open(&spec.log_path, spec.log_max_bytes)?);
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().cloned());
    let pty = if spec.tty {
        let p = nix::pty::openpty(None, None)?;
        let slave = File::from(p.slave);
        cmd.stdin(slave.try_clone()?)
            .stdout(slave.try_clone()?)
            .stderr(slave);
        Some(File::from(p.master))
    } else {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        None
    };
    let (mounts, cgroups, cwd, tty) = (
        spec.mounts.clone(),
        spec.cgroups.clone(),
        spec.cwd.clone(),
        spec.tty,
    );
    let (uid, gid) = (spec.run_as_user, spec.run_as_group);
    // SAFETY: the shim is single-threaded, so the child may allocate.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroups(&cgroups)?;
            if let Some(ns) = &ns {
                ns.enter()?;
                unshare(CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
                // Every source is opened before anything is mounted: a
                // volume mounted over a directory (an emptyDir on /tmp)
                // must not hide the sources of the mounts after it.
                let sources = mounts
                    .iter()
                    .map(|m| {
                        nix::fcntl::open(
                            &m.source,
                            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                            nix::sys::stat::Mode::empty(),
                        )
                        .map_err(|e| {
                            std::io::Error::other(format!("opening {}: {e}", m.source.display()))
                        })
                    })
                    .collect::<std::io::Result<Vec<_>>>()?;
                for (m, fd) in mounts.iter().zip(&sources) {
                    use std::os::fd::AsRawFd;
                    let via = BindMount {
                        source: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                        ..m.clone()
                    };
                    bind_mount(&via).map_err(|e| {
                        std::io::Error::other(format!("{e} (source {})", m.source.display()))
                    })?;
                }
            }
            if tty {
                make_controlling_tty()?;
            }
            if let Some(cwd) = &cwd {
                std::fs::create_dir_all(cwd)?;
                std::env::set_current_dir(cwd)?;
            }
            if let Some(g) = gid {
                nix::unistd::setgid(nix::unistd::Gid::from_raw(g)).map_err(std::io::Error::from)?;
            }
            if let Some(u) = uid {
                nix::unistd::setuid(nix::unistd::Uid::from_raw(u)).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "exec: {:?}: executable file not found in $PATH",
                    spec.argv[0]
                )
            } else {
                format!("starting {:?}: {e}", spec.argv[0])
            };
            return finish(start_error(msg));
        }
    };
    drop(cmd);
    if let Some(id) = ProcId::of(child.id() as i32) {
        write_atomic(&pid_path(dir), &serde_json::to_vec(&id)?)?;
    }
    // One thread only: after joining the pod's pid namespace this process
    // cannot start threads (clone fails with EINVAL), so it polls.
    let mut sources: Vec<(File, &'static str)> = vec![];
    if let Some(master) = pty {
        sources.push((master, "stdout"));
    } else {
        if let Some(o) = child.stdout.take() {
            sources.push((File::from(std::os::fd::OwnedFd::from(o)), "stdout"));
        }
        if let Some(e) = child.stderr.take() {
            sources.push((File::from(std::os::fd::OwnedFd::from(e)), "stderr"));
        }
    }
    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
    let status = pump(&mut child, sources, &mut log, &spec.cgroups)?;
    let oom = spec.cgroups.iter().any(|cg| {
        std::fs::read_to_string(cg.join("memory.oom_control"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ").map(|n| n.trim() != "0"))
            })
            .unwrap_or(false)
    });
    let signal = status.signal();
    finish(ExitRecord {
        exit_code: status.code().unwrap_or(128 + signal.unwrap_or(0)),
        signal,
        reason: oom.then(|| "OOMKilled".into()),
        message: None,
        finished_at: now_rfc3339(),
    })
}

fn bind_mount(m: &BindMount) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let io = std::io::Error::from;
    mount(
        Some(&m.source),
        &m.target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        std::io::Error::other(format!(
            "mounting {} at {}: {e}",
            m.source.display(),
            m.target.display()
        ))
    })?;
    if m.read_only {
        mount(
            None::<&str>,
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(io)?;
    }
    Ok(())
}

/// SIGKILL every process left in a container's cgroups.
pub fn kill_cgroup(cgroups: &[PathBuf]) {
    for cg in cgroups {
        if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Appends CRI-format log lines (`<time> <stream> <F|P> <text>`), the format
/// `kubectl logs` reads from the kubelet, and rotates the file at a size cap
/// keeping one previous file: a container that writes gigabytes costs at most
/// twice the cap.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl LogWriter {
    pub fn open(path: &Path, max: u64) -> Result<Self> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the log file {}", path.display()))?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max: max.max(4096),
        })
    }

    pub fn line(&mut self, stream: &str, text: &[u8], partial: bool) {
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut rec = Vec::with_capacity(text.len() + 48);
        rec.extend_from_slice(ts.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.as_bytes());
        rec.extend_from_slice(if partial { b" P " } else { b" F " });
        rec.extend_from_slice(text);
        rec.push(b'\n');
        if self.size + rec.len() as u64 > self.max {
            let _ = std::fs::rename(&self.path, rotated(&self.path));
            if let Ok(f) = File::options().create(true).append(true).open(&self.path) {
                self.file = f;
                self.size = 0;
            }
        }
        if self.file.write_all(&rec).is_ok() {
            self.size += rec.len() as u64;
        }
    }
}

/// The name of a log file's one rotated predecessor.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Longest line kept whole; longer output is split into partial (`P`)
/// records, as CRI runtimes do at 16 KiB.
const MAX_LINE: usize = 16 * 1024;

/// Copy the container's output into the log until it exits and its
/// output is drained (or 2 s after it exits, if something it left behind
/// still holds the pipes open). Returns its exit status.
fn pump(
    child: &mut std::process::Child,
    mut sources: Vec<(File, &'static str)>,
    log: &mut LogWriter,
    cgroups: &[PathBuf],
) -> Result<std::process::ExitStatus> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut pending: Vec<Vec<u8>> = sources.iter().map(|_| Vec::new()).collect();
    let mut status = None;
    let mut deadline = None;
    let mut buf = vec![0u8; 64 * 1024];
    let flush = |pending: &mut Vec<u8>, stream: &str, log: &mut LogWriter, eof: bool| {
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = pending.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            log.line(stream, &line, false);
        }
        while pending.len() >= MAX_LINE {
            let part: Vec<u8> = pending.drain(..MAX_LINE).collect();
            log.line(stream, &part, true);
        }
        if eof && !pending.is_empty() {
            log.line(stream, pending, false);
            pending.clear();
        }
    };
    loop {
        if sources.is_empty() && status.is_some() {
            break;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            break;
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = sources
                .iter()
                .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut closed = vec![];
        for (i, is_ready) in ready.iter().enumerate() {
            if !is_ready {
                continue;
            }
            match sources[i].0.read(&mut buf) {
                Ok(0) | Err(_) => closed.push(i),
                Ok(n) => {
                    pending[i].extend_from_slice(&buf[..n]);
                    flush(&mut pending[i], sources[i].1, log, false);
                }
            }
        }
        for i in closed.into_iter().rev() {
            let (_, stream) = sources.remove(i);
            let mut p = pending.remove(i);
            flush(&mut p, stream, log, true);
        }
        if status.is_none() {
            if let Some(st) = child.try_wait()? {
                status = Some(st);
                // The container is its main process: whatever it left in
                // its cgroup goes with it, as when a pid namespace ends.
                kill_cgroup(cgroups);
                deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(2));
            }
        }
    }
    match status {
        Some(s) => Ok(s),
        None => Ok(child.wait()?),
    }
}

/// The cgroup v1 directories of a process, from /proc/PID/cgroup.
fn cgroups_of(pid: i32) -> Vec<PathBuf> {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return vec![];
    };
    s.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            (path.starts_with("/mast/") && ["memory", "cpu", "cpu,cpuacct", "pids"].contains(&ctrl))
                .then(|| {
                    let dir = if ctrl == "cpu,cpuacct" { "cpu" } else { ctrl };
                    PathBuf::from("/sys/fs/cgroup").join(dir).join(&path[1..])
                })
        })
        .collect()
}

/// `mast nsexec --target PID -- CMD...`: run a command inside the container
/// whose main process is PID — its namespaces, cgroups, environment and
/// working directory — as `kubectl exec` and exec probes need. Returns the
/// command's exit code.
pub fn nsexec(target: i32, tty: bool, argv: &[String]) -> Result<i32> {
    if argv.is_empty() {
        bail!("nsexec needs a command");
    }
    let mut env: Vec<(String, String)> = std::fs::read(format!("/proc/{target}/environ"))
        .with_context(|| format!("the container (process {target}) is not running"))?
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    if tty && !env.iter().any(|(k, _)| k == "TERM") {
        // As container runtimes do for `exec -t`.
        env.push(("TERM".into(), "xterm".into()));
    }
    let cwd = std::fs::read_link(format!("/proc/{target}/cwd")).ok();
    let root = privileged();
    let cgroups = if root { cgroups_of(target) } else { vec![] };
    let ns = if root {
        let ns = Namespaces::open(target)?;
        setns(&ns.pid, CloneFlags::CLONE_NEWPID).context("joining the pod's pid namespace")?;
        Some(ns)
    } else {
        None
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(env);
    // SAFETY: nsexec is single-threaded, so the child may allocate.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroups(&cgroups)?;
            if let Some(ns) = &ns {
                ns.enter()?;
            }
            if let Some(cwd) = &cwd {
                let _ = std::env::set_current_dir(cwd);
            }
            if tty {
                make_controlling_tty()?;
            }
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("exec: {:?}: executable file not found in $PATH", argv[0]);
            return Ok(127);
        }
        Err(e) => return Err(e).with_context(|| format!("running {:?}", argv[0])),
    };
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Set a terminal's size (a `kubectl exec -t` resize).
pub fn set_winsize(fd: &impl std::os::fd::AsRawFd, cols: u16, rows: u16) {
    nix::ioctl_write_ptr_bad!(tiocswinsz, nix::libc::TIOCSWINSZ, nix::pty::Winsize);
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the fd is an open pty master and `ws` outlives the call.
    let _ = unsafe { tiocswinsz(fd.as_raw_fd(), &ws) };
}
