//! `flotilla ca`: the certificate authority as files, checked from the
//! outside with openssl: the chain verifies, the certificate names the
//! Envoy's identity, an operator's CA made by openssl is imported, and
//! bad input is refused without touching what exists.

use std::{path::Path, process::Command};

use crate::support::{BINARY, run_cli};

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by scripts/install-test-tools");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn ca_init_and_issue_write_a_chain_openssl_verifies_naming_the_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, out) = (dir.path().join("ca"), dir.path().join("envoy"));
    let (code, said, err) = run_cli(BINARY.as_ref(), &["ca", "init", "--out", path(&ca)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        said.contains("made the CA of trust domain flotilla.local"),
        "{said}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(ca.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let (code, said, err) = run_cli(
        BINARY.as_ref(),
        &[
            "ca",
            "issue",
            "--ca",
            path(&ca),
            "--envoy",
            "front-1",
            "--out",
            path(&out),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        said.contains("spiffe://flotilla.local/envoy/front-1"),
        "{said}"
    );
    let cert = out.join("front-1.crt");
    assert!(
        openssl(&["verify", "-CAfile", path(&out.join("ca.crt")), path(&cert)]).contains(": OK")
    );
    let text = openssl(&["x509", "-in", path(&cert), "-noout", "-text"]);
    assert!(
        text.contains("URI:spiffe://flotilla.local/envoy/front-1"),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    // The key is the certificate's.
    let modulus = |args: &[&str]| openssl(args);
    assert_eq!(
        modulus(&["pkey", "-in", path(&out.join("front-1.key")), "-pubout"]),
        modulus(&["x509", "-in", path(&cert), "-noout", "-pubkey"])
    );

    // Nothing is ever written over.
    let before = std::fs::read(ca.join("ca.key")).unwrap();
    let (code, _, err) = run_cli(BINARY.as_ref(), &["ca", "init", "--out", path(&ca)]);
    assert_eq!(code, 64);
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(std::fs::read(ca.join("ca.key")).unwrap(), before);
}

#[test]
fn an_operators_ca_made_by_openssl_is_imported_and_a_non_ca_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("corp.crt"), dir.path().join("corp.key"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        path(&key),
        "-out",
        path(&cert),
        "-subj",
        "/CN=corp root",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    let ca = dir.path().join("ca");
    let (code, said, err) = run_cli(
        BINARY.as_ref(),
        &[
            "ca",
            "init",
            "--out",
            path(&ca),
            "--cert",
            path(&cert),
            "--key",
            path(&key),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(said.contains("imported"), "{said}");
    let out = dir.path().join("envoy");
    let (code, _, err) = run_cli(
        BINARY.as_ref(),
        &[
            "ca",
            "issue",
            "--ca",
            path(&ca),
            "--envoy",
            "edge",
            "--out",
            path(&out),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        openssl(&[
            "verify",
            "-CAfile",
            path(&cert),
            path(&out.join("edge.crt"))
        ])
        .contains(": OK")
    );

    // A certificate that is not a CA's, and a key that is not the CA's.
    let other = dir.path().join("other");
    let (code, _, err) = run_cli(
        BINARY.as_ref(),
        &[
            "ca",
            "init",
            "--out",
            path(&other),
            "--cert",
            path(&out.join("edge.crt")),
            "--key",
            path(&out.join("edge.key")),
        ],
    );
    assert_eq!(code, 64);
    assert!(err.contains("not a CA's"), "{err}");
    let (code, _, err) = run_cli(
        BINARY.as_ref(),
        &[
            "ca",
            "init",
            "--out",
            path(&other),
            "--cert",
            path(&cert),
            "--key",
            path(&out.join("edge.key")),
        ],
    );
    assert_eq!(code, 64);
    assert!(err.contains("not the CA certificate's key"), "{err}");
    assert!(!other.join("ca.key").exists());
}
