//! The cluster's PKI, generated once with `openssl` (P-256 keys, 10 years) into
//! `target/cluster/pki` and kept across `down`/`up`.

use std::{fs, path::Path, process::Command};

use anyhow::Context as _;

use super::{Layout, NODE_IP, NODE_NAME, SERVICE_IP};
use crate::run_cmd;

/// A client or serving certificate signed by the cluster CA.
struct Cert {
    file: &'static str,
    cn: String,
    org: Option<&'static str>,
    /// Serving certificates name their addresses.
    sans: Option<String>,
}

fn certs() -> Vec<Cert> {
    vec![
        Cert {
            file: "apiserver",
            cn: "kube-apiserver".to_owned(),
            org: None,
            sans: Some(format!(
                "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
                 DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,\
                 IP:{NODE_IP},IP:{SERVICE_IP}"
            )),
        },
        Cert {
            file: "apiserver-kubelet-client",
            cn: "kube-apiserver-kubelet-client".to_owned(),
            org: Some("system:masters"),
            sans: None,
        },
        Cert {
            file: "admin",
            cn: "kubernetes-admin".to_owned(),
            org: Some("system:masters"),
            sans: None,
        },
        Cert {
            file: "controller-manager",
            cn: "system:kube-controller-manager".to_owned(),
            org: None,
            sans: None,
        },
        Cert {
            file: "scheduler",
            cn: "system:kube-scheduler".to_owned(),
            org: None,
            sans: None,
        },
        Cert {
            file: "kube-proxy",
            cn: "system:kube-proxy".to_owned(),
            org: None,
            sans: None,
        },
        Cert {
            file: "kubelet",
            cn: format!("system:node:{NODE_NAME}"),
            org: Some("system:nodes"),
            sans: None,
        },
    ]
}

fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let mut command = Command::new("openssl");
    command.args(args).current_dir(dir);
    run_cmd(&mut command).context("openssl failed (is the openssl package installed?)")
}

fn key(dir: &Path, name: &str) -> anyhow::Result<()> {
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ],
        dir,
    )
}

/// Creates what is missing: the CA, each certificate, the service-account key pair.
pub fn ensure(layout: &Layout) -> anyhow::Result<()> {
    let dir = &layout.pki;
    fs::create_dir_all(dir)?;
    let mut made = 0;
    if !dir.join("ca.crt").is_file() {
        key(dir, "ca")?;
        openssl(
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                "/CN=syscall-recorder-test-ca",
                "-days",
                "3650",
                "-out",
                "ca.crt",
            ],
            dir,
        )?;
        made += 1;
    }
    for cert in certs() {
        if dir.join(format!("{}.crt", cert.file)).is_file() {
            continue;
        }
        key(dir, cert.file)?;
        let subject = match cert.org {
            Some(org) => format!("/O={org}/CN={}", cert.cn),
            None => format!("/CN={}", cert.cn),
        };
        let csr = format!("{}.csr", cert.file);
        openssl(
            &[
                "req",
                "-new",
                "-key",
                &format!("{}.key", cert.file),
                "-subj",
                &subject,
                "-out",
                &csr,
            ],
            dir,
        )?;
        let ext = format!("{}.ext", cert.file);
        let usage = match &cert.sans {
            Some(sans) => format!("extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n"),
            None => "extendedKeyUsage=clientAuth\n".to_owned(),
        };
        fs::write(
            dir.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{usage}"
            ),
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "3650",
                "-extfile",
                &ext,
                "-out",
                &format!("{}.crt", cert.file),
            ],
            dir,
        )?;
        let _ = fs::remove_file(dir.join(&csr));
        let _ = fs::remove_file(dir.join(&ext));
        made += 1;
    }
    if !dir.join("sa.pub").is_file() {
        key(dir, "sa")?;
        openssl(&["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"], dir)?;
        made += 1;
    }
    if made == 0 {
        eprintln!("cluster: pki present ({})", dir.display());
    } else {
        eprintln!("cluster: generated {made} pki files in {}", dir.display());
    }
    Ok(())
}

/// Standard base64 (for the certificates embedded in kubeconfigs).
pub fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
