//! A TCP proxy of the test's own between a client and the API server, on the loopback: every
//! byte is forwarded until `cut` closes every connection and refuses new ones for a while —
//! a network partition, without touching the API server.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// A black hole: bytes are held, not forwarded, and no connection is closed (no reset for
    /// the client to notice): requests hang, as behind a dropped route.
    stall: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, open, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let stall = Arc::new(AtomicBool::new(false));
        let (c, o, s, st) = (cut.clone(), open.clone(), stop.clone(), stall.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else { continue };
                {
                    let mut open = o.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let st = st.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    while st.load(Ordering::SeqCst) {
                                        std::thread::sleep(Duration::from_millis(20));
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, cut, stall, open, stop }
    }

    /// Holds every byte for `how_long` without closing anything (new connections are made but
    /// carry nothing either); returns when it ends.
    pub fn stall(&self, how_long: Duration) -> Instant {
        self.stall.store(true, Ordering::SeqCst);
        std::thread::sleep(how_long);
        // What was held is dropped with its connections: a partition does not deliver late.
        self.stall.store(false, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        Instant::now()
    }

    /// Closes every open connection and refuses new ones for `how_long`; returns when the cut
    /// ends, with the instant it ended.
    pub fn cut(&self, how_long: Duration) -> Instant {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            // Connections that slipped in as the cut began are closed too.
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.cut.store(false, Ordering::SeqCst);
        Instant::now()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A proxy in front of the API server of `$KUBECONFIG`, and at `path` a copy of that
/// kubeconfig whose server is the proxy.
pub fn proxied_kubeconfig(path: &str) -> std::sync::Arc<Proxy> {
    let original = std::fs::read_to_string(std::env::var("KUBECONFIG").expect("KUBECONFIG is set")).unwrap();
    let start = original.find("https://127.0.0.1:").expect("the local control plane's server URL") + "https://".len();
    let end = start + original[start..].find(|c: char| c == '"' || c.is_whitespace() || c == ',' || c == '}').unwrap();
    let upstream: SocketAddr = original[start..end].parse().unwrap();
    let proxy = Proxy::start(upstream);
    std::fs::write(path, original.replacen(&original[start..end], &proxy.addr.to_string(), 1)).unwrap();
    std::sync::Arc::new(proxy)
}
