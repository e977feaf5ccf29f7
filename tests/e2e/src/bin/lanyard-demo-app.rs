//! `lanyard-demo-app`: the two sample applications of the containerized local stack
//! (tests/e2e/tests/containers.rs), one binary so one small image serves both.
//!
//! - `lanyard-demo-app serve ADDR`: an HTTP server on ADDR answering every request with
//!   `hello from the web app`; prints `listening on ADDR (app)` once it accepts.
//! - `lanyard-demo-app call ADDR`: one `GET /` to ADDR in plaintext (the proxies do the mTLS);
//!   prints the response body and exits 0 on a 200, exits 1 naming what failed otherwise.
//!
//! Arguments are parsed by hand: this crate's binaries have no CLI parser among their
//! dependencies, and two positional forms need none.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const GREETING: &str = "hello from the web app\n";
/// No single read or write of either side waits longer than this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head larger than this is not a request this app expects.
const MAX_REQUEST: usize = 16 * 1024;

const USAGE: &str = "usage: lanyard-demo-app serve ADDR | lanyard-demo-app call ADDR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [command, addr] => addr
            .parse::<SocketAddr>()
            .map(|addr| (command.as_str(), addr))
            .map_err(|e| format!("{addr:?} is not an IP:PORT address: {e}")),
        _ => Err(USAGE.to_owned()),
    };
    let result = match parsed {
        Ok(("serve", addr)) => serve(addr),
        Ok(("call", addr)) => call(addr),
        Ok((other, _)) => Err(format!("unknown command {other:?}; {USAGE}")),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanyard-demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(addr: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on {local} (app)");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                std::thread::spawn(move || answer(stream));
            }
            Err(e) => eprintln!("lanyard-demo-app: accept: {e}"),
        }
    }
    Ok(())
}

/// Reads one request head and answers it.
fn answer(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{GREETING}",
        GREETING.len()
    );
}

fn call(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} answered no HTTP response: {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{addr} answered {:?}",
            head.lines().next().unwrap_or("")
        ));
    }
    print!("{body}");
    std::io::stdout().flush().map_err(|e| e.to_string())
}
