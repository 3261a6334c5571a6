//! Failpoints for crash tests: `REPLICATED_FAILPOINTS=name=action[,name=action...]`.
//!
//! Actions: `crash` (the process dies at once, like kill -9: no destructors, no flush), `pause`
//! (the calling thread sleeps forever, so a test can kill the process while it is stuck there),
//! `delay` (the calling thread sleeps DELAY, then goes on: widens a race window for a test),
//! `error` (the step fails with an I/O error), `panic` (the calling thread panics: checks that
//! a panic is contained where it happens). An action may be prefixed with `N*` to fire only on
//! the N-th pass (`commit.after_append=3*crash`). Unknown names are harmless; the list of names
//! lives in README.md. Read once per process; costs one atomic load when unset.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Crash,
    Pause,
    Delay,
    Error,
    Panic,
}

/// How long a `delay` failpoint holds the calling thread.
const DELAY: std::time::Duration = std::time::Duration::from_secs(2);

struct Point {
    action: Action,
    /// Fire on this pass (1-based); 0 = every pass.
    nth: u64,
    passes: u64,
}

fn table() -> &'static Option<Mutex<HashMap<String, Point>>> {
    static T: OnceLock<Option<Mutex<HashMap<String, Point>>>> = OnceLock::new();
    T.get_or_init(|| {
        let spec = std::env::var("REPLICATED_FAILPOINTS").ok()?;
        let mut map = HashMap::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((name, act)) = item.split_once('=') else {
                continue;
            };
            let (nth, act) = match act.split_once('*') {
                Some((n, a)) => (n.parse().unwrap_or(0), a),
                None => (0, act),
            };
            let action = match act {
                "crash" => Action::Crash,
                "pause" => Action::Pause,
                "delay" => Action::Delay,
                "error" => Action::Error,
                "panic" => Action::Panic,
                _ => continue,
            };
            map.insert(name.to_string(), Point { action, nth, passes: 0 });
        }
        Some(Mutex::new(map))
    })
}

/// Evaluates failpoint `name`: may kill the process, block forever, or return an error.
pub fn hit(name: &str) -> std::io::Result<()> {
    let Some(t) = table() else { return Ok(()) };
    let action = {
        let mut t = t.lock();
        let Some(p) = t.get_mut(name) else {
            return Ok(());
        };
        p.passes += 1;
        if p.nth != 0 && p.passes != p.nth {
            return Ok(());
        }
        p.action
    };
    match action {
        Action::Crash => {
            // writeln! to stderr never panics (eprintln! does when stderr cannot be written).
            let _ = writeln!(std::io::stderr(), "replicated: failpoint {name}: crash");
            // SAFETY: SIGKILL to ourselves: the closest thing to kill -9 from outside.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
                libc::_exit(137)
            }
        }
        Action::Pause => {
            // writeln! to stderr never panics (eprintln! does when stderr cannot be written).
            let _ = writeln!(std::io::stderr(), "replicated: failpoint {name}: pause");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Action::Delay => {
            let _ = writeln!(std::io::stderr(), "replicated: failpoint {name}: delay");
            std::thread::sleep(DELAY);
            Ok(())
        }
        Action::Error => Err(std::io::Error::other(format!("failpoint {name}"))),
        Action::Panic => panic!("failpoint {name}: panic"),
    }
}
