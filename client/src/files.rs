//! Writing an SVID for programs that read files: `svid.pem` (the chain, leaf first),
//! `svid.key` (PKCS#8 PEM, 0600) and `bundle.pem` (its trust domain's CA certificates).
//!
//! Each file is written as a new file under a private temporary name in the directory
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`, 0600) and renamed over the destination
//! ([`lanyard_daemon::private_file::write_new_atomic`]): a file or symlink someone else put
//! at a destination is replaced, never written through, so its owner cannot read the key and
//! a symlink's target is untouched.

use std::path::{Path, PathBuf};

use lanyard_daemon::private_file::write_new_atomic;
use lanyard_svid::X509Svid;
use lanyard_svid::bundle::certificates_from_der;
use lanyard_svid::pem::{encode_certificates, encode_private_key};

/// The file names written into the directory.
pub const SVID_FILE: &str = "svid.pem";
pub const KEY_FILE: &str = "svid.key";
pub const BUNDLE_FILE: &str = "bundle.pem";

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the SVID has no private key to write")]
    NoKey,
    #[error("the SVID's trust bundle is unusable: {0}")]
    Bundle(#[from] lanyard_svid::bundle::BundleError),
    #[error("creating the directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `svid`'s chain, key and `bundle_der` (concatenated DER) into `dir`, creating it.
pub fn write_svid_files(dir: &Path, svid: &X509Svid, bundle_der: &[u8]) -> Result<(), WriteError> {
    let key = svid.private_key_pkcs8().ok_or(WriteError::NoKey)?;
    let bundle = certificates_from_der(bundle_der)?;
    std::fs::create_dir_all(dir).map_err(|source| WriteError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let write = |name: &str, contents: &[u8], mode: u32| {
        let path = dir.join(name);
        write_new_atomic(&path, contents, mode).map_err(|source| WriteError::File { path, source })
    };
    write(KEY_FILE, encode_private_key(key).as_bytes(), 0o600)?;
    write(
        SVID_FILE,
        encode_certificates(svid.chain()).as_bytes(),
        0o644,
    )?;
    write(BUNDLE_FILE, encode_certificates(&bundle).as_bytes(), 0o644)?;
    Ok(())
}
