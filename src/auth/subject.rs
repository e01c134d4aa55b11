//! A certificate's subject as an RFC 4514 string, for logs and the audit log.
//!
//! The subject is a label chosen by whoever issued the certificate, so it is
//! written such that no value can pass for structure: a `,` or `+` inside a
//! value is escaped, never a separator (x509-parser's `Display` does not
//! escape, so `O=evil\,CN=root` read as a second `CN=root`), and control
//! characters are hex-escaped, so a value cannot break a log line. It
//! decides nothing; only the [`super::Identity`] does.

use x509_parser::asn1_rs::{Any, Class, Tag, ToDer};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// Upper-case hex digits, for `\XX` escapes and `#` values.
const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `name` as RFC 4514 §2 writes it: the RDNs in reverse order of the
/// RDNSequence, separated by `,`; the attributes of a multi-valued RDN in
/// their encoded order, joined by `+`; each one `TYPE=value`.
///
/// `TYPE` is a short name of RFC 4514 §3 (CN, L, ST, O, OU, C, STREET, DC,
/// UID), else the dotted OID. The value is the escaped string (§2.4) of a
/// UTF8String, PrintableString, IA5String, NumericString, BMPString,
/// UniversalString or TeletexString (read as Latin-1); for a dotted OID, or
/// a value of another type or not decodable, it is `#` and the hex of its
/// DER encoding.
pub(super) fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<_> = name.iter().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attribute) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            push_attribute(&mut out, attribute);
        }
    }
    out
}

/// Appends `TYPE=value`.
fn push_attribute(out: &mut String, attribute: &AttributeTypeAndValue<'_>) {
    let value = attribute.attr_value();
    let oid = attribute.attr_type().to_id_string();
    match short_name(&oid) {
        Some(name) => {
            out.push_str(name);
            out.push('=');
            match text(value) {
                Some(text) => push_escaped(out, &text),
                None => push_der_hex(out, value),
            }
        }
        None => {
            out.push_str(&oid);
            out.push('=');
            push_der_hex(out, value);
        }
    }
}

/// The RFC 4514 §3 short name of the attribute type `oid`, if it has one.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// The characters of a string value, if it is a (primitive, universal)
/// string type we can decode.
fn text(value: &Any<'_>) -> Option<String> {
    if value.class() != Class::Universal || value.header.is_constructed() {
        return None;
    }
    let data = value.data;
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString => {
            std::str::from_utf8(data).ok().map(str::to_owned)
        }
        // T.61 in practice carries Latin-1, as most decoders assume.
        Tag::TeletexString => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString if data.len() % 2 == 0 => {
            let units = data
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
            char::decode_utf16(units).collect::<Result<_, _>>().ok()
        }
        Tag::UniversalString if data.len() % 4 == 0 => data
            .chunks_exact(4)
            .map(|quad| char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]])))
            .collect(),
        _ => None,
    }
}

/// Appends `value` escaped per RFC 4514 §2.4: `"` `+` `,` `;` `<` `>` `\`
/// with a backslash, as are a leading space or `#` and a trailing space;
/// control characters (NUL, newline, DEL, C1) as `\XX` per UTF-8 byte.
fn push_escaped(out: &mut String, value: &str) {
    for (at, c) in value.char_indices() {
        let first = at == 0;
        let last = at + c.len_utf8() == value.len();
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if first => out.push_str("\\#"),
            ' ' if first || last => out.push_str("\\ "),
            c if c.is_control() => {
                for &byte in c.encode_utf8(&mut [0; 4]).as_bytes() {
                    out.push('\\');
                    push_hex(out, byte);
                }
            }
            c => out.push(c),
        }
    }
}

/// Appends `#` and the hex of `value`'s DER encoding (RFC 4514 §2.4).
fn push_der_hex(out: &mut String, value: &Any<'_>) {
    out.push('#');
    // Writing to a Vec cannot fail, and a parsed header always re-encodes;
    // were it ever to fail, a bare `#` (no valid encoding) is shown.
    for byte in value.to_der_vec().unwrap_or_default() {
        push_hex(out, byte);
    }
}

/// Appends `byte` as two upper-case hex digits.
fn push_hex(out: &mut String, byte: u8) {
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair, PublicKeyData};
    use x509_parser::asn1_rs::Oid;
    use x509_parser::x509::RelativeDistinguishedName;

    /// The subject `with_subject_from_certificate_der` reports for a
    /// certificate whose subject is `dn` (one RDN per entry, in push order).
    fn subject_of(dn: DistinguishedName) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (identity, subject) = Identity::with_subject_from_certificate_der(cert.der()).unwrap();
        assert_eq!(
            identity,
            Identity::from_spki_der(&key.subject_public_key_info())
        );
        subject
    }

    fn dn(entries: &[(DnType, DnValue)]) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        for (ty, value) in entries {
            dn.push(ty.clone(), value.clone());
        }
        dn
    }

    fn utf8(s: &str) -> DnValue {
        DnValue::Utf8String(s.to_owned())
    }

    fn attribute<'a>(oid: &'a [u64], tag: Tag, data: &'a [u8]) -> AttributeTypeAndValue<'a> {
        AttributeTypeAndValue::new(Oid::from(oid).unwrap(), Any::from_tag_and_data(tag, data))
    }

    const CN: &[u64] = &[2, 5, 4, 3];
    const O: &[u64] = &[2, 5, 4, 10];
    const OU: &[u64] = &[2, 5, 4, 11];

    // Our own CA writes a client's name as one UTF8String CN (`ca::
    // common_name`); the audit log and its tests expect exactly `CN=alice`.
    #[test]
    fn a_plain_common_name_stays_as_it_is() {
        assert_eq!(
            subject_of(dn(&[(DnType::CommonName, "alice".into())])),
            "CN=alice"
        );
    }

    // RFC 4514 §2.1: the last RDN of the sequence comes first.
    #[test]
    fn rdns_print_in_reverse_order() {
        let name = dn(&[
            (
                DnType::CountryName,
                DnValue::PrintableString("DE".try_into().unwrap()),
            ),
            (DnType::OrganizationName, utf8("Example")),
            (DnType::CommonName, utf8("alice")),
        ]);
        assert_eq!(subject_of(name), "CN=alice,O=Example,C=DE");
    }

    // The review's attack: an O value holding `,CN=root` must not read as a
    // second CN after the real one.
    #[test]
    fn a_comma_in_a_value_cannot_fake_an_rdn() {
        let name = dn(&[
            (DnType::OrganizationName, utf8("evil,CN=root")),
            (DnType::CommonName, utf8("x")),
        ]);
        assert_eq!(subject_of(name), "CN=x,O=evil\\,CN=root");
    }

    // Every special character of RFC 4514 §2.4 is escaped with a backslash,
    // wherever it stands.
    #[test]
    fn special_characters_are_escaped() {
        let name = dn(&[(DnType::CommonName, utf8("a\"b+c,d;e<f>g\\h=i"))]);
        assert_eq!(subject_of(name), "CN=a\\\"b\\+c\\,d\\;e\\<f\\>g\\\\h=i");
    }

    // A value cannot start a new log line or hide a NUL: control characters
    // are written as hex pairs.
    #[test]
    fn control_characters_are_hex_escaped() {
        let name = dn(&[(DnType::CommonName, utf8("alice\nCN=root\0\u{7f}\u{85}"))]);
        assert_eq!(subject_of(name), "CN=alice\\0ACN=root\\00\\7F\\C2\\85");
    }

    // A leading `#` would read as a hex value, and spaces at either end are
    // lost by parsers: they are escaped; inside a value they are not.
    #[test]
    fn leading_hash_and_edge_spaces_are_escaped() {
        let name = dn(&[
            (DnType::OrganizationalUnitName, utf8(" a # b ")),
            (DnType::CommonName, utf8("#root")),
        ]);
        assert_eq!(subject_of(name), "CN=\\#root,OU=\\ a # b\\ ");
        assert_eq!(subject_of(dn(&[(DnType::CommonName, utf8(" "))])), "CN=\\ ");
        assert_eq!(subject_of(dn(&[(DnType::CommonName, utf8(""))])), "CN=");
    }

    // An attribute without a short name is its dotted OID with the value's
    // DER in hex (RFC 4514 §2.4), even when the value is a string.
    #[test]
    fn a_dotted_oid_has_a_hex_value() {
        let name = dn(&[
            (DnType::CustomDnType(vec![1, 2, 3, 4]), utf8("a,b")),
            (DnType::CommonName, utf8("alice")),
        ]);
        // 0C: UTF8String, 03: three bytes, "a,b".
        assert_eq!(subject_of(name), "CN=alice,1.2.3.4=#0C03612C62");
    }

    // The other string types decode to the same text: BMPString (UTF-16),
    // IA5String, TeletexString (Latin-1), UniversalString (UTF-32).
    #[test]
    fn other_string_types_decode() {
        let name = dn(&[
            (
                DnType::OrganizationName,
                DnValue::BmpString("Ünï,code".try_into().unwrap()),
            ),
            (
                DnType::CommonName,
                DnValue::Ia5String("alice".try_into().unwrap()),
            ),
        ]);
        assert_eq!(subject_of(name), "CN=alice,O=Ünï\\,code");
        let name = X509Name::new(
            vec![
                RelativeDistinguishedName::new(vec![attribute(O, Tag::TeletexString, b"Caf\xe9")]),
                RelativeDistinguishedName::new(vec![attribute(
                    CN,
                    Tag::UniversalString,
                    b"\0\0\0a\0\x01\xf6\x00",
                )]),
            ],
            &[],
        );
        assert_eq!(rfc4514(&name), "CN=a\u{1f600},O=Café");
    }

    // A value that is not a decodable string under a known type is shown in
    // hex too, never dropped or passed through raw.
    #[test]
    fn undecodable_values_are_hex() {
        let name = X509Name::new(
            vec![RelativeDistinguishedName::new(vec![
                attribute(CN, Tag::Utf8String, b"\xff"),
                attribute(O, Tag::Integer, b"\x05"),
                attribute(OU, Tag::BmpString, b"\0a\0"),
            ])],
            &[],
        );
        assert_eq!(rfc4514(&name), "CN=#0C01FF+O=#020105+OU=#1E03006100");
    }

    // RFC 4514 §2.2: the attributes of one multi-valued RDN are joined by
    // `+`, in their encoded order, and a `+` inside a value is escaped.
    #[test]
    fn a_multi_valued_rdn_is_joined_by_plus() {
        let name = X509Name::new(
            vec![
                RelativeDistinguishedName::new(vec![attribute(O, Tag::Utf8String, b"Example")]),
                RelativeDistinguishedName::new(vec![
                    attribute(CN, Tag::Utf8String, b"alice"),
                    attribute(OU, Tag::PrintableString, b"a+b"),
                ]),
            ],
            &[],
        );
        assert_eq!(rfc4514(&name), "CN=alice+OU=a\\+b,O=Example");
        assert_eq!(rfc4514(&X509Name::new(vec![], &[])), "");
    }
}
