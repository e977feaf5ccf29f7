//! A TCP echo application for the proxy tests, served by threads of the test process: each
//! connection optionally gets a banner first (a server-speaks-first protocol), then every
//! byte back until the client closes. It counts the connections it accepted, so a test can
//! show that a refused connection never reached the app.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running echo app; stops accepting when dropped.
pub struct EchoApp {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    listener: Arc<TcpListener>,
}

impl EchoApp {
    /// An echo app on a loopback port of the kernel's choosing.
    pub fn start(banner: Option<&'static [u8]>) -> Self {
        Self::serve(
            TcpListener::bind("127.0.0.1:0").expect("bind the echo app"),
            banner,
        )
    }

    /// Serves on `listener` (e.g. one bound inside a network namespace).
    pub fn serve(listener: TcpListener, banner: Option<&'static [u8]>) -> Self {
        let addr = listener.local_addr().expect("echo app address");
        let listener = Arc::new(listener);
        let accepted = Arc::new(AtomicUsize::new(0));
        let (l, count) = (listener.clone(), accepted.clone());
        std::thread::spawn(move || {
            // Ends when the listener is shut down (drop): accept then fails.
            while let Ok((mut stream, _)) = l.accept() {
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    if let Some(banner) = banner
                        && stream.write_all(banner).is_err()
                    {
                        return;
                    }
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
        });
        Self {
            addr,
            accepted,
            listener,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        // SAFETY: shutdown(2) on a socket this value owns (kept open by the Arc); it wakes
        // the thread blocked in accept, which then ends.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}
