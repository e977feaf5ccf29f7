//! The benchmark's targets: a plain TCP echo server (behind the proxies) and a bare rustls
//! mTLS echo server (the handshake baseline). Both hold connections open until the peer
//! closes, so they also serve as the far end of the idle-connection test.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Largest read per echo; the benchmark sends one byte at a time.
const ECHO_BUF: usize = 4096;

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = [0u8; ECHO_BUF];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Announces the bound address the way Lanyard's daemons do, so the script can parse it.
fn announce(listener: &TcpListener, role: &str) -> anyhow::Result<()> {
    println!("listening on {} ({role})", listener.local_addr()?);
    Ok(())
}

pub async fn plain_echo(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    announce(&listener, "echo")?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(echo(tcp));
    }
}

pub async fn tls_echo(listen: &str, config: rustls::ServerConfig) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(listen).await?;
    announce(&listener, "tls-echo")?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                echo(tls).await;
            }
        });
    }
}
