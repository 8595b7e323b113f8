//! Certificates made for one test: a CA, the server and client certificates it signs, the
//! files gatehouse's `[tls]` reads, and the server side of a TLS handshake for origins.

use std::path::PathBuf;
use std::sync::Arc;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509};

use super::TempDir;

/// A certificate authority made for one test: EC P-256 keys, certificates valid for a day.
pub struct Authority {
    pub cert: X509,
    key: PKey<Private>,
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// What a certificate is for, and the names it carries.
enum Purpose<'a> {
    /// A server at `localhost` and 127.0.0.1.
    Loopback,
    /// A server for these DNS names.
    Names(&'a [&'a str]),
    /// A client.
    Client,
}

impl Authority {
    /// A self-signed CA called `name`.
    pub fn new(name: &str) -> Self {
        let key = ec_key();
        let mut builder = certificate_builder(name, &key, random_serial());
        builder.set_issuer_name(&subject(name)).unwrap();
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        builder
            .append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        builder.sign(&key, MessageDigest::sha256()).unwrap();
        Self {
            cert: builder.build(),
            key,
        }
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap()
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Issued {
        self.issue("localhost", Purpose::Loopback, random_serial())
    }

    /// A client certificate, for servers that require one.
    pub fn client(&self) -> Issued {
        self.issue("gatehouse", Purpose::Client, random_serial())
    }

    /// A server certificate for the DNS `names` (wildcards allowed), with a serial of the
    /// test's choosing to tell certificates for the same names apart.
    pub fn named(&self, names: &[&str], serial: u32) -> Issued {
        let serial = BigNum::from_u32(serial).unwrap();
        self.issue(names[0], Purpose::Names(names), serial)
    }

    fn issue(&self, name: &str, purpose: Purpose, serial: BigNum) -> Issued {
        let key = ec_key();
        let mut builder = certificate_builder(name, &key, serial);
        builder.set_issuer_name(self.cert.subject_name()).unwrap();
        let context = builder.x509v3_context(Some(&self.cert), None);
        let server = !matches!(purpose, Purpose::Client);
        let mut names = SubjectAlternativeName::new();
        let usage = match purpose {
            Purpose::Loopback => {
                names.dns("localhost").ip("127.0.0.1");
                ExtendedKeyUsage::new().server_auth().build().unwrap()
            }
            Purpose::Names(list) => {
                for name in list {
                    names.dns(name);
                }
                ExtendedKeyUsage::new().server_auth().build().unwrap()
            }
            Purpose::Client => ExtendedKeyUsage::new().client_auth().build().unwrap(),
        };
        if server {
            let names = names.build(&context).unwrap();
            builder.append_extension(names).unwrap();
        }
        builder.append_extension(usage).unwrap();
        builder.sign(&self.key, MessageDigest::sha256()).unwrap();
        Issued {
            cert_pem: builder.build().to_pem().unwrap(),
            key_pem: key.private_key_to_pem_pkcs8().unwrap(),
        }
    }
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn random_serial() -> BigNum {
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    serial
}

fn certificate_builder(name: &str, key: &PKeyRef<Private>, serial: BigNum) -> X509Builder {
    let mut builder = X509Builder::new().unwrap();
    builder.set_version(2).unwrap();
    let serial = Asn1Integer::from_bn(&serial).unwrap();
    builder.set_serial_number(&serial).unwrap();
    builder.set_subject_name(&subject(name)).unwrap();
    builder.set_pubkey(key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    builder
}

fn subject(name: &str) -> X509Name {
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", name).unwrap();
    subject.build()
}

/// A TLS server's side of the handshake with `identity`; with `client_ca`, a client
/// certificate from that CA is required.
pub fn tls_acceptor(identity: &Issued, client_ca: Option<&Authority>) -> Arc<SslAcceptor> {
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    let cert = X509::from_pem(&identity.cert_pem).unwrap();
    let key = PKey::private_key_from_pem(&identity.key_pem).unwrap();
    acceptor.set_certificate(&cert).unwrap();
    acceptor.set_private_key(&key).unwrap();
    if let Some(ca) = client_ca {
        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(ca.cert.clone()).unwrap();
        acceptor.set_verify_cert_store(store.build()).unwrap();
        acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Arc::new(acceptor.build())
}

/// gatehouse's own certificates: a test CA that clients trust, and the certificate and key
/// files `[tls]` names, in a folder of their own.
pub struct Pki {
    pub authority: Authority,
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Self {
        Self {
            authority: Authority::new("gatehouse test CA"),
            dir: TempDir::new(),
        }
    }

    /// The CA certificate clients trust.
    pub fn ca(&self) -> &X509 {
        &self.authority.cert
    }

    /// Writes `FILE.crt` (the certificate, then the CA's) and `FILE.key` for `names`, with
    /// serial `serial`; returns their paths.
    pub fn issue(&self, file: &str, names: &[&str], serial: u32) -> (PathBuf, PathBuf) {
        let issued = self.authority.named(names, serial);
        let mut chain = issued.cert_pem;
        chain.extend(self.authority.pem());
        (
            self.dir.write(&format!("{file}.crt"), chain),
            self.dir.write(&format!("{file}.key"), issued.key_pem),
        )
    }

    /// `[tls]` on port 0 with `a.test` (the default, serial 10) and `*.b.test` (serial 20).
    pub fn tls_section(&self) -> String {
        self.tls_section_with("")
    }

    /// [`Self::tls_section`] with more `[tls]` keys.
    pub fn tls_section_with(&self, keys: &str) -> String {
        let (a_cert, a_key) = self.issue("a", &["a.test"], 10);
        let (b_cert, b_key) = self.issue("b", &["*.b.test"], 20);
        format!(
            "[tls]\nlisten = [\"127.0.0.1:0\"]\n{keys}\
             [[tls.certificates]]\ncert = {a_cert:?}\nkey = {a_key:?}\n\
             [[tls.certificates]]\ncert = {b_cert:?}\nkey = {b_key:?}\n"
        )
    }
}
