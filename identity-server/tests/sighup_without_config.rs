//! A server started without `--config` survives SIGHUP (whose default action is to exit):
//! there is nothing to reload, and it keeps serving. In a test binary of its own, so no other
//! server's handler is what keeps the process alive.

mod common;

use common::*;
use lanyard_server::admin::{AdminRequest, AdminResponse};
use lanyard_server::config::RunArgs;

#[tokio::test]
async fn sighup_without_config_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        RunArgs {
            trust_domain: Some(TD.into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        },
        None,
    )
    .await;
    // SAFETY: kill with our own pid; the server registered its SIGHUP handler before it
    // announced its listener.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    // The signal is delivered before kill returns (to this thread or another); the process
    // would be gone by now without the handler. The server still answers.
    let AdminResponse::Entries(view) = server.admin(AdminRequest::EntryShow { node: None }).await
    else {
        panic!("entry show failed")
    };
    assert_eq!((view.total, view.last_reload), (0, None));
}
