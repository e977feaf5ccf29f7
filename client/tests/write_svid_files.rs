//! Issue 14 item 14: `api fetch x509 --write DIR` wrote through files and symlinks already in
//! DIR, so another uid's pre-created `svid.key` kept its owner (who could read the key) and a
//! symlink sent the key wherever it pointed. These tests perform both attacks.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use lanyard_client::files::{BUNDLE_FILE, KEY_FILE, SVID_FILE, write_svid_files};
use lanyard_svid::bundle::certificates_from_pem;
use lanyard_svid::test_support::TestCa;

/// Another uid than ours (ours is root in CI containers; then the attacker is `nobody`).
const ATTACKER_UID: u32 = 65534;

fn fixture() -> (TestCa, lanyard_svid::X509Svid, Vec<u8>) {
    let ca = TestCa::new("example.org");
    let svid = ca.svid("spiffe://example.org/web");
    let bundle = ca.bundle().x509_authorities_der();
    (ca, svid, bundle)
}

fn mode(path: &std::path::Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn assert_written(dir: &std::path::Path, svid: &lanyard_svid::X509Svid, ca: &TestCa) {
    let key = dir.join(KEY_FILE);
    let meta = fs::symlink_metadata(&key).unwrap();
    assert!(meta.file_type().is_file(), "svid.key is a plain file");
    assert_eq!(mode(&key), 0o600);
    let pem = fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    let chain = certificates_from_pem(&fs::read(dir.join(SVID_FILE)).unwrap()).unwrap();
    assert_eq!(chain, svid.chain());
    let bundle = certificates_from_pem(&fs::read(dir.join(BUNDLE_FILE)).unwrap()).unwrap();
    assert_eq!(bundle, [ca.root().clone()]);
}

#[test]
fn a_symlink_planted_as_svid_key_is_replaced_and_its_target_untouched() {
    let (ca, svid, bundle) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("victim.txt");
    fs::write(&target, b"not yours").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join(KEY_FILE)).unwrap();
    // The other files as dangling symlinks into a place that must stay empty.
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("chain"), dir.path().join(SVID_FILE)).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("bundle"), dir.path().join(BUNDLE_FILE)).unwrap();

    write_svid_files(dir.path(), &svid, &bundle).unwrap();

    assert_eq!(
        fs::read(&target).unwrap(),
        b"not yours",
        "the target is untouched"
    );
    assert_eq!(mode(&target), 0o644);
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written through"
    );
    assert_written(dir.path(), &svid, &ca);
}

#[test]
fn a_readable_svid_key_of_another_uid_is_replaced_by_a_fresh_0600_file() {
    let (ca, svid, bundle) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let our_uid = fs::metadata(dir.path()).unwrap().uid();
    let key = dir.path().join(KEY_FILE);
    fs::write(&key, b"").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    // As root, hand the planted file to another uid, exactly as the attacker's would be.
    let planted_by_other = our_uid == 0;
    if planted_by_other {
        std::os::unix::fs::chown(&key, Some(ATTACKER_UID), Some(ATTACKER_UID)).unwrap();
    }
    let planted = fs::metadata(&key).unwrap();
    // The attacker keeps the planted file open, hoping to read what is written into it.
    let attacker_handle = fs::File::open(&key).unwrap();

    write_svid_files(dir.path(), &svid, &bundle).unwrap();

    let written = fs::metadata(&key).unwrap();
    assert_ne!(
        written.ino(),
        planted.ino(),
        "a new file, not the planted one"
    );
    assert_eq!(written.uid(), our_uid, "owned by the writer");
    if planted_by_other {
        assert_eq!(planted.uid(), ATTACKER_UID);
    }
    assert_eq!(mode(&key), 0o600);
    let mut leaked = Vec::new();
    std::io::Read::read_to_end(&mut &attacker_handle, &mut leaked).unwrap();
    assert!(leaked.is_empty(), "the planted file received no key bytes");
    assert_written(dir.path(), &svid, &ca);
    // Nothing but the three files is left (no temporary names).
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [BUNDLE_FILE, KEY_FILE, SVID_FILE]);
}
