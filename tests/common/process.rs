//! Processes and ports: loopback ports that tests running in parallel do not share, and spawning
//! etcd so that it can never outlive the test process (not even one killed with SIGKILL).

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{mpsc, Mutex, OnceLock};

/// A loopback TCP port that this process has not handed out before and that was free when
/// checked. Ports come from 20000..32000 (below Linux's default ephemeral range, so outgoing
/// connections do not grab them), starting at a per-process offset so that test binaries running
/// at the same time mostly stay out of each other's way; the bind check catches the rest.
pub fn alloc_port() -> u16 {
    const LO: u32 = 20000;
    const SPAN: u32 = 12000;
    static STATE: OnceLock<Mutex<(u32, HashSet<u16>)>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let seed = std::process::id().wrapping_mul(2654435761) ^ (now_nanos() as u32);
        Mutex::new((seed % SPAN, HashSet::new()))
    });
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..SPAN {
        st.0 = (st.0 + 1) % SPAN;
        let port = (LO + st.0) as u16;
        if st.1.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            st.1.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {LO}..{}", LO + SPAN);
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawn `cmd` from the harness's spawner thread, which lives as long as the process. The child
/// gets `PR_SET_PDEATHSIG = SIGKILL` (which fires when the *spawning thread* exits, hence the
/// dedicated thread): if the test process dies for any reason, the kernel kills the child.
pub(super) fn spawn_guarded(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                let parent = std::process::id() as libc::pid_t;
                for (mut cmd, reply) in rx {
                    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
                    unsafe {
                        cmd.pre_exec(move || {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            // The parent died before the prctl took effect: do not start at all.
                            if libc::getppid() != parent {
                                return Err(std::io::Error::other("test process gone"));
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("spawner thread alive");
    reply_rx.recv().expect("spawner reply")
}
