//! The identity in an X.509 certificate: its subject name and subject alternative names.
//!
//! rustls verifies certificates but does not describe them, and a full X.509 parser is a
//! heavy dependency for two fields. This reads just enough DER to find them; anything it does
//! not understand leaves a field empty rather than failing the connection (the certificate
//! was already verified by then).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use nats_edge_filters::filter::TlsPeer;

/// DER tags used below.
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const TELETEX_STRING: u8 = 0x14;
const IA5_STRING: u8 = 0x16;
const UNIVERSAL_STRING: u8 = 0x1c;
const BMP_STRING: u8 = 0x1e;
/// `[0]` EXPLICIT version, `[3]` EXPLICIT extensions in a TBSCertificate.
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;

/// id-ce-subjectAltName, 2.5.29.17.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// id-pe-tlsfeature, 1.3.6.1.5.5.7.1.24: RFC 7633's TLS Feature extension.
const OID_TLS_FEATURE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x18];
/// The TLS Feature that asks for a stapled OCSP response (`status_request`).
const STATUS_REQUEST: u8 = 5;
const INTEGER: u8 = 0x02;

/// Whether a DER certificate demands a stapled OCSP response ("OCSP Must-Staple": the TLS
/// Feature extension naming `status_request`). Clients that honour it, browsers among
/// them, refuse a server that presents it without a staple.
pub fn requires_ocsp_staple(der: &[u8]) -> bool {
    extension_value(der, OID_TLS_FEATURE)
        .and_then(|value| {
            let (mut features, _) = expect(value, SEQUENCE)?;
            while let Some((tag, content, after)) = next(features) {
                if tag == INTEGER && content == [STATUS_REQUEST] {
                    return Some(true);
                }
                features = after;
            }
            Some(false)
        })
        .unwrap_or(false)
}

/// The value (the OCTET STRING's content) of the extension `oid` of a DER certificate.
fn extension_value<'a>(der: &'a [u8], oid: &[u8]) -> Option<&'a [u8]> {
    find_extension(extensions(der)?, oid)
}

/// The content of a DER certificate's `[3]` extensions, if it has them.
fn extensions(der: &[u8]) -> Option<&[u8]> {
    let mut rest = tbs_fields(der)?;
    // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo; then
    // optional unique ids, then the extensions.
    for _ in 0..6 {
        rest = next(rest)?.2;
    }
    loop {
        let (tag, content, after) = next(rest)?;
        if tag == EXTENSIONS {
            return Some(content);
        }
        rest = after;
    }
}

/// The value (the OCTET STRING's content) of the extension `oid` in a certificate's
/// `[3]` extensions; `None` when it has none, or they cannot be read.
fn find_extension<'a>(extensions: &'a [u8], oid: &[u8]) -> Option<&'a [u8]> {
    let (mut list, _) = expect(extensions, SEQUENCE)?;
    while !list.is_empty() {
        let (ext, after) = expect(list, SEQUENCE)?;
        list = after;
        let (ext_oid, mut rest) = expect(ext, OID)?;
        if ext_oid != oid {
            continue;
        }
        // The optional `critical` flag.
        if rest.first() == Some(&BOOLEAN) {
            rest = next(rest)?.2;
        }
        return Some(expect(rest, OCTET_STRING)?.0);
    }
    None
}

/// Reads the subject and SANs of a DER certificate.
pub fn identity(der: &[u8]) -> TlsPeer {
    let mut peer = TlsPeer {
        subject: String::new(),
        sans: Vec::new(),
    };
    let _ = read_identity(der, &mut peer);
    peer
}

/// The whole SubjectPublicKeyInfo element (tag, length and contents) of a DER certificate:
/// what a certificate's public key fingerprint (nats-server's `spki_sha256`) is taken of.
pub fn subject_public_key_info(der: &[u8]) -> Option<&[u8]> {
    let mut rest = tbs_fields(der)?;
    // serialNumber, signature, issuer, validity, subject, then subjectPublicKeyInfo.
    for _ in 0..5 {
        rest = next(rest)?.2;
    }
    let (_, _, after) = next(rest)?;
    Some(&rest[..rest.len() - after.len()])
}

/// The fields of a DER certificate's TBSCertificate after its optional version, from the
/// serialNumber on.
fn tbs_fields(der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    Some(if tbs.first() == Some(&VERSION) {
        next(tbs)?.2
    } else {
        tbs
    })
}

/// A DER certificate's subject as Go's `pkix.Name.String()` writes it, which is how
/// nats-server's `/connz` shows a client certificate's subject: the attributes Go has fields
/// for in its fixed order (`SERIALNUMBER`, `CN`, `OU`, `O`, `POSTALCODE`, `STREET`, `L`, `ST`,
/// `C`, each kind one RDN, the last `CN` and `SERIALNUMBER` only), then every other
/// attribute, as its dotted OID and `#` with the hex of its value encoded again (a string as
/// a PrintableString, or a UTF8String if it cannot be one), in reverse certificate order.
pub fn go_subject(der: &[u8]) -> Option<String> {
    let mut rest = tbs_fields(der)?;
    // serialNumber, signature, issuer, validity, then the subject.
    for _ in 0..4 {
        rest = next(rest)?.2;
    }
    let (subject, _) = expect(rest, SEQUENCE)?;
    // Every attribute, in certificate order: its OID, and its value as Go reads it.
    let attributes: Vec<(&[u8], GoValue)> = rdn_attributes(subject)?
        .into_iter()
        .flatten()
        .map(|attr| {
            let value = match decode_string(attr.tag, attr.value) {
                Some(text) => GoValue::Text(text),
                None => GoValue::Raw(attr.encoded),
            };
            (attr.oid, value)
        })
        .collect();
    // 2.5.4.x: Go's fields, in the order its String() writes them (the reverse of the
    // order it builds the RDN sequence in).
    const FIELDS: [(u8, &str); 9] = [
        (5, "SERIALNUMBER"),
        (3, "CN"),
        (11, "OU"),
        (10, "O"),
        (17, "POSTALCODE"),
        (9, "STREET"),
        (7, "L"),
        (8, "ST"),
        (6, "C"),
    ];
    let field = |oid: &[u8]| match oid {
        [0x55, 0x04, x] => FIELDS.iter().find(|(id, _)| id == x).map(|(id, _)| *id),
        _ => None,
    };
    // Every other attribute, one RDN each, after the named ones and the last first (Go puts
    // them at the start of the sequence its String() writes backwards).
    let mut rdns: Vec<String> = Vec::new();
    for (oid, value) in attributes.iter().rev() {
        if field(oid).is_some() {
            continue;
        }
        let encoded = match value {
            GoValue::Text(text) => {
                let printable = text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b));
                let tag = if printable {
                    PRINTABLE_STRING
                } else {
                    UTF8_STRING
                };
                let mut out = vec![tag];
                push_der_length(&mut out, text.len());
                out.extend_from_slice(text.as_bytes());
                out
            }
            GoValue::Raw(raw) => raw.to_vec(),
        };
        rdns.push(format!("{}=#{}", oid_to_string(oid), hex(&encoded)));
    }
    let mut named: Vec<String> = Vec::new();
    for (id, name) in FIELDS {
        let values: Vec<&str> = attributes
            .iter()
            .filter(|(oid, _)| field(oid) == Some(id))
            .filter_map(|(_, value)| match value {
                GoValue::Text(text) => Some(text.as_str()),
                GoValue::Raw(_) => None,
            })
            .collect();
        let values: Vec<&str> = match (id, values.last()) {
            // One CommonName and one SerialNumber: the last.
            (3 | 5, Some(last)) => vec![*last],
            _ => values,
        };
        if !values.is_empty() {
            let rdn: Vec<String> = values
                .iter()
                .map(|v| format!("{name}={}", go_escape(v)))
                .collect();
            named.push(rdn.join("+"));
        }
    }
    named.extend(rdns);
    Some(named.join(","))
}

/// One attribute of a distinguished name.
struct Attribute<'a> {
    oid: &'a [u8],
    tag: u8,
    /// The value's contents.
    value: &'a [u8],
    /// The value's whole encoding: tag, length and contents.
    encoded: &'a [u8],
}

/// The attributes of a DER Name, RDN by RDN, in its order.
fn rdn_attributes(name: &[u8]) -> Option<Vec<Vec<Attribute<'_>>>> {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (set, after) = expect(rest, SET)?;
        rest = after;
        let mut rdn = Vec::new();
        let mut attrs = set;
        while !attrs.is_empty() {
            let (attr, after) = expect(attrs, SEQUENCE)?;
            attrs = after;
            let (oid, encoded) = expect(attr, OID)?;
            let (tag, value, after) = next(encoded)?;
            rdn.push(Attribute {
                oid,
                tag,
                value,
                encoded: &encoded[..encoded.len() - after.len()],
            });
        }
        rdns.push(rdn);
    }
    Some(rdns)
}

/// An attribute value as Go's certificate parser leaves it: text, or the raw encoding.
enum GoValue<'a> {
    Text(String),
    Raw(&'a [u8]),
}

/// Go's escaping of a value in `RDNSequence.String()`.
fn go_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.char_indices() {
        let escape = match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => true,
            ' ' => i == 0 || i == value.len() - 1,
            '#' => i == 0,
            _ => false,
        };
        if escape {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn push_der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

fn read_identity(der: &[u8], peer: &mut TlsPeer) -> Option<()> {
    let mut rest = tbs_fields(der)?;
    // serialNumber, signature, issuer, validity, then the subject.
    for _ in 0..4 {
        rest = next(rest)?.2;
    }
    let (subject, _) = expect(rest, SEQUENCE)?;
    peer.subject = name_to_string(subject).unwrap_or_default();
    peer.sans = extensions(der)
        .and_then(subject_alt_names)
        .unwrap_or_default();
    Some(())
}

/// One TLV: (tag, content, what follows).
fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        // High tag numbers do not occur in the structures read here.
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = next(input)?;
    (t == tag).then_some((content, rest))
}

/// RFC 4514: the RDNs in reverse order, joined by `,`; the values of a multi-valued RDN
/// joined by `+`.
fn name_to_string(name: &[u8]) -> Option<String> {
    let mut rdns: Vec<String> = rdn_attributes(name)?
        .into_iter()
        .map(|rdn| {
            let parts: Vec<String> = rdn
                .iter()
                .map(|attr| {
                    let key = attribute_name(attr.oid)
                        .map_or_else(|| oid_to_string(attr.oid), str::to_string);
                    let value = match decode_string(attr.tag, attr.value) {
                        Some(text) => escape_value(&text),
                        // RFC 4514: `#` and the value's whole encoding.
                        None => format!("#{}", hex(attr.encoded)),
                    };
                    format!("{key}={value}")
                })
                .collect();
            parts.join("+")
        })
        .collect();
    rdns.reverse();
    Some(rdns.join(","))
}

fn attribute_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "SERIALNUMBER",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x11] => "POSTALCODE",
        // 0.9.2342.19200300.100.1.25 and .1
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        // 1.2.840.113549.1.9.1
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return None,
    })
}

fn oid_to_string(oid: &[u8]) -> String {
    let mut out = String::new();
    let mut value: u64 = 0;
    let mut first = true;
    for &b in oid {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if first {
                let (a, b) = match value {
                    0..=39 => (0, value),
                    40..=79 => (1, value - 40),
                    _ => (2, value - 80),
                };
                let _ = write!(out, "{a}.{b}");
                first = false;
            } else {
                let _ = write!(out, ".{value}");
            }
            value = 0;
        }
    }
    out
}

fn decode_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        UTF8_STRING | PRINTABLE_STRING | IA5_STRING => {
            std::str::from_utf8(value).ok().map(str::to_string)
        }
        TELETEX_STRING => Some(value.iter().map(|&b| b as char).collect()),
        BMP_STRING => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        UNIVERSAL_STRING => value
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// Escapes an attribute value as RFC 4514 asks.
fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The GeneralNames of the subjectAltName extension, if the certificate has one.
fn subject_alt_names(extensions: &[u8]) -> Option<Vec<String>> {
    let Some(value) = find_extension(extensions, OID_SUBJECT_ALT_NAME) else {
        return Some(Vec::new());
    };
    let (mut names, _) = expect(value, SEQUENCE)?;
    let mut out = Vec::new();
    while let Some((tag, content, after)) = next(names) {
        names = after;
        let text = || String::from_utf8_lossy(content).into_owned();
        match tag {
            0x81 => out.push(format!("email:{}", text())),
            0x82 => out.push(format!("DNS:{}", text())),
            0x86 => out.push(format!("URI:{}", text())),
            0x87 => match content.len() {
                4 => out.push(format!(
                    "IP:{}",
                    Ipv4Addr::from(<[u8; 4]>::try_from(content).ok()?)
                )),
                16 => out.push(format!(
                    "IP:{}",
                    Ipv6Addr::from(<[u8; 16]>::try_from(content).ok()?)
                )),
                _ => {}
            },
            // otherName, x400Address, directoryName, ediPartyName, registeredID.
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// A certificate with the TLS Feature `status_request` ("OCSP Must-Staple") is told
    /// apart from one without it.
    #[test]
    fn finds_ocsp_must_staple() {
        let plain = CertificateParams::new(vec!["edge.example.com".into()]).unwrap();
        assert!(!requires_ocsp_staple(&cert(plain)));
        let mut stapled = CertificateParams::new(vec!["edge.example.com".into()]).unwrap();
        // SEQUENCE { INTEGER 5 }
        stapled
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 24],
                vec![0x30, 0x03, 0x02, 0x01, 0x05],
            ));
        assert!(requires_ocsp_staple(&cert(stapled)));
        assert!(!requires_ocsp_staple(b"not a certificate"));
    }

    #[test]
    fn reads_subject_and_sans() {
        let mut params = CertificateParams::new(vec!["alice.example.com".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "NL");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme, Inc.");
        params.distinguished_name.push(DnType::CommonName, "alice");
        params
            .subject_alt_names
            .push(SanType::IpAddress("192.0.2.7".parse().unwrap()));
        params
            .subject_alt_names
            .push(SanType::IpAddress("2001:db8::1".parse().unwrap()));
        params
            .subject_alt_names
            .push(SanType::Rfc822Name("alice@example.com".try_into().unwrap()));
        params.subject_alt_names.push(SanType::URI(
            "spiffe://example.com/alice".try_into().unwrap(),
        ));
        let peer = identity(&cert(params));
        assert_eq!(peer.subject, "CN=alice,O=Acme\\, Inc.,C=NL");
        assert_eq!(
            peer.sans,
            vec![
                "DNS:alice.example.com",
                "IP:192.0.2.7",
                "IP:2001:db8::1",
                "email:alice@example.com",
                "URI:spiffe://example.com/alice",
            ]
        );
    }

    /// The subject as Go's `pkix.Name.String()` writes it (nats-server's `/connz`): its named
    /// attributes in Go's order, whatever the certificate's, then the others, the last first,
    /// as `#` and their value encoded again.
    #[test]
    fn the_subject_as_go_writes_it() {
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let dn = &mut params.distinguished_name;
        dn.push(DnType::CountryName, "NL");
        dn.push(DnType::CommonName, "alice");
        dn.push(DnType::OrganizationName, "Acme, Inc.");
        dn.push(DnType::CustomDnType(vec![1, 2, 3, 4]), "x");
        dn.push(
            DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            "a@b.c",
        );
        assert_eq!(
            go_subject(&cert(params)).unwrap(),
            "CN=alice,O=Acme\\, Inc.,C=NL,1.2.840.113549.1.9.1=#0c056140622e63,1.2.3.4=#130178"
        );
    }

    #[test]
    fn no_sans_and_unknown_attributes() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![1, 2, 3, 4]), "x");
        params
            .distinguished_name
            .push(DnType::CommonName, " padded ");
        let peer = identity(&cert(params));
        assert_eq!(peer.subject, "CN=\\ padded\\ ,1.2.3.4=x");
        assert!(peer.sans.is_empty());
    }

    /// A value that is no string is written as RFC 4514 asks, and as Go writes it: `#` and
    /// the hex of its whole encoding.
    #[test]
    fn a_value_that_is_no_string_is_its_encoding_in_hex() {
        // SET { SEQUENCE { OID 1.2.3.4, OCTET STRING "ab" } }
        let rdn = [
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x2a, 0x03, 0x04, 0x04, 0x02, b'a', b'b',
        ];
        assert_eq!(name_to_string(&rdn).as_deref(), Some("1.2.3.4=#04026162"));
    }

    #[test]
    fn garbage_yields_empty_identity() {
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x04\x02ab",
        ] {
            let peer = identity(bad);
            assert!(peer.subject.is_empty() && peer.sans.is_empty());
        }
    }

    #[test]
    fn oid_strings() {
        assert_eq!(oid_to_string(&[0x55, 0x04, 0x03]), "2.5.4.3");
        assert_eq!(
            oid_to_string(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            "1.2.840.113549"
        );
    }
}
