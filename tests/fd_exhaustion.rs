//! Both listeners pause after a failed accept instead of retrying at once.
//! Its own test binary: it lowers the process's file-descriptor limit.

mod common;

use std::time::Duration;

use common::*;

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

fn accept_errors(listener: &str) -> f64 {
    let handle = switchyard::telemetry::prometheus().expect("recorder");
    metric(
        &handle.render(),
        "switchyard_accept_errors_total",
        &[&format!("listener=\"{listener}\"")],
    )
}

#[tokio::test]
async fn out_of_file_descriptors_both_listeners_pause_instead_of_spinning() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    let admin = switch.admin_addr.expect("admin on");
    // Client sockets made while descriptors are still free; connecting
    // them needs none.
    let clients: Vec<socket2::Socket> = (0..2)
        .map(|_| {
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket")
        })
        .collect();

    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill or read a plain struct we own.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let lowered = libc::rlimit {
        rlim_cur: open_fds() + 16,
        rlim_max: limit.rlim_max,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
    // Use up what is left.
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    clients[0]
        .connect(&switch.terminal_addr.into())
        .expect("the kernel completes the handshake");
    clients[1].connect(&admin.into()).expect("handshake");

    // The measurement window: without a pause each listener would fail
    // its accept thousands of times in it; with a 50 ms pause, about 10.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let terminal_errors = accept_errors("terminals");
    let admin_errors = accept_errors("admin");

    drop(hog);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    for (name, n) in [("terminals", terminal_errors), ("admin", admin_errors)] {
        assert!(n >= 1.0, "{name}: the accept did fail ({n})");
        assert!(n <= 20.0, "{name}: {n} failed accepts in 500 ms: spinning");
    }
    // With descriptors back, both listeners serve again.
    let (status, _) = http_get(admin, "/health").await;
    assert!(status == 200 || status == 503, "admin answers: {status}");
    let mut t = Terminal::connect(switch.terminal_addr).await;
    assert_eq!(code(&t.request(&network(1, "301")).await), "00");
    drop(clients);
    switch.shutdown().await;
}
