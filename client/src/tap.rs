//! Following a proxy's tap: the line stream its `--admin` listener serves (one line per
//! finished connection; the serving side is in lanyard-proxy).

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Why following stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "cannot connect to the proxy's admin address {admin}: {source} (is the proxy running with --admin {admin}?)"
    )]
    Connect {
        admin: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the tap of {admin}: {source}")]
    Read {
        admin: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the tap's lines: {0}")]
    Write(#[source] std::io::Error),
}

/// Copies the line stream of the proxy whose admin listener is at `admin` to `out`, a line at
/// a time and flushed, until the proxy closes it.
pub async fn follow(
    admin: SocketAddr,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<(), TapError> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|source| TapError::Connect { admin, source })?;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|source| TapError::Read { admin, source })?
    {
        async {
            out.write_all(line.as_bytes()).await?;
            out.write_all(b"\n").await?;
            out.flush().await
        }
        .await
        .map_err(TapError::Write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_lines_until_the_proxy_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"proxy=in a\n# dropped=2\nproxy=out b\n")
                .await
                .unwrap();
        });
        let mut out = Vec::new();
        follow(admin, &mut out).await.unwrap();
        server.await.unwrap();
        assert_eq!(out, b"proxy=in a\n# dropped=2\nproxy=out b\n");
    }

    #[tokio::test]
    async fn no_proxy_is_a_clear_error() {
        // A port just freed: nothing listens on it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        drop(listener);
        let err = follow(admin, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(err, TapError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&admin.to_string()), "{err}");
    }
}
