//! Test PKI generated with rcgen at test time: a CA, a server certificate usable for client and
//! peer URLs, a client certificate with CN `root` (etcd's user once auth is on), more client
//! certificates on demand, and an unrelated CA with its own client certificate for wrong-CA tests.
//! Every file is PEM, mode 0600.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use etcd_client::{Certificate, Identity, TlsOptions};

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Test PKI, written as PEM files (mode 0600) into one directory.
pub struct Tls {
    pub dir: PathBuf,
    /// The CA every member trusts and that signed the server and client certificates.
    pub ca: PathBuf,
    /// Server (and peer) certificate: SANs `127.0.0.1`, `localhost`; server + client auth.
    pub server: CertPair,
    /// Client certificate with CN `root`: authenticates as etcd user `root` once auth is on.
    pub client: CertPair,
    /// A second, unrelated CA.
    pub other_ca: PathBuf,
    /// A client certificate (CN `root`) signed by `other_ca`: must be refused by the members.
    pub other_client: CertPair,
    ca_key: rcgen::KeyPair,
    ca_cert: rcgen::Certificate,
    _tmp: Option<tempfile::TempDir>,
}

impl Tls {
    /// Generate everything into a fresh temp dir owned by the returned value.
    pub fn temp() -> Tls {
        let tmp = tempfile::Builder::new()
            .prefix("lifeboat-tls-")
            .tempdir()
            .expect("tempdir");
        let mut tls = Tls::generate(tmp.path());
        tls._tmp = Some(tmp);
        tls
    }

    /// Generate everything into `dir` (created if needed).
    pub fn generate(dir: &Path) -> Tls {
        fs::create_dir_all(dir).expect("create tls dir");
        let (ca_cert, ca_key) = new_ca("etcd-lifeboat test CA");
        let ca = write_private(dir, "ca.crt", &ca_cert.pem());
        let (other_ca_cert, other_ca_key) = new_ca("unrelated test CA");
        let other_ca = write_private(dir, "other-ca.crt", &other_ca_cert.pem());

        let server = {
            let mut p =
                rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
                    .expect("server params");
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "etcd-test-server");
            // etcd also dials itself and its peers with this certificate (grpc-gateway, peers),
            // so it needs clientAuth as well as serverAuth.
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            issue(dir, "server", p, &ca_cert, &ca_key)
        };
        let client = issue_client(dir, "client", "root", &ca_cert, &ca_key);
        let other_client = issue_client(dir, "other-client", "root", &other_ca_cert, &other_ca_key);
        Tls {
            dir: dir.to_path_buf(),
            ca,
            server,
            client,
            other_ca,
            other_client,
            ca_key,
            ca_cert,
            _tmp: None,
        }
    }

    /// Another client certificate from the main CA, for user `cn` (e.g. a non-root user).
    pub fn issue_client(&self, cn: &str) -> CertPair {
        issue_client(
            &self.dir,
            &format!("client-{cn}"),
            cn,
            &self.ca_cert,
            &self.ca_key,
        )
    }

    /// etcd-client TLS options: trust `ca`, present `id`.
    pub fn client_options(ca: &Path, id: &CertPair) -> TlsOptions {
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(fs::read(ca).expect("read ca")))
            .identity(Identity::from_pem(
                fs::read(&id.cert).expect("read cert"),
                fs::read(&id.key).expect("read key"),
            ))
    }
}

fn new_ca(cn: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().expect("ca key");
    (p.self_signed(&key).expect("self-sign ca"), key)
}

fn issue_client(
    dir: &Path,
    stem: &str,
    cn: &str,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> CertPair {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    issue(dir, stem, p, ca, ca_key)
}

fn issue(
    dir: &Path,
    stem: &str,
    mut params: rcgen::CertificateParams,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> CertPair {
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca, ca_key).expect("sign");
    CertPair {
        cert: write_private(dir, &format!("{stem}.crt"), &cert.pem()),
        key: write_private(dir, &format!("{stem}.key"), &key.serialize_pem()),
    }
}

/// Write `contents` to `dir/name` with mode 0600.
pub fn write_private(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    std::io::Write::write_all(&mut f, contents.as_bytes()).expect("write");
    path
}
