//! Test certificates made here with rcgen: a CA, a server certificate for 127.0.0.1 and
//! localhost, and client certificates whose common names are what etcd takes as the user
//! under `--client-cert-auth`.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// Writes `ca.pem`, `server.pem`/`server-key.pem` and, for each name in `clients`,
/// `<name>.pem`/`<name>-key.pem` (common name `<name>`) into `dir`.
pub fn make(dir: &Path, clients: &[&str]) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "testkit CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key")).expect("CA");
    write(dir, "ca.pem", &ca.pem());
    let server = [("server", ExtendedKeyUsagePurpose::ServerAuth)];
    let clients = clients
        .iter()
        .map(|c| (*c, ExtendedKeyUsagePurpose::ClientAuth));
    for (name, purpose) in server.into_iter().chain(clients) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &ca).expect("sign");
        write(dir, &format!("{name}.pem"), &cert.pem());
        write(dir, &format!("{name}-key.pem"), &key.serialize_pem());
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// etcd options for a member serving TLS with the server certificate of [`make`] and
/// requiring client certificates (`--client-cert-auth`); the test's etcdctl calls use
/// `client`'s certificate.
pub fn etcd_with_client_certs(dir: &Path, client: &str) -> crate::etcd::EtcdOptions {
    let p = |f: &str| dir.join(f).display().to_string();
    crate::etcd::EtcdOptions {
        extra_args: vec![
            "--cert-file".into(),
            p("server.pem"),
            "--key-file".into(),
            p("server-key.pem"),
            "--trusted-ca-file".into(),
            p("ca.pem"),
            "--client-cert-auth".into(),
        ],
        client_tls: true,
        etcdctl_args: vec![
            "--cacert".into(),
            p("ca.pem"),
            "--cert".into(),
            p(&format!("{client}.pem")),
            "--key".into(),
            p(&format!("{client}-key.pem")),
        ],
    }
}
