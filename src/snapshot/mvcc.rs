//! etcd's meaning of a few bytes inside the database: revision keys of bucket `key`, the user key
//! inside an `mvccpb.KeyValue` value, and the `meta/storageVersion` semver.
//!
//! These are the parts of `etcdutl snapshot status` that look inside values (spec §2 steps 5–7).
//! Pure functions over byte slices; every length and varint is bounds-checked.

/// Main revision of a revision key: `BigEndian(k[0..8])` as etcd 3.5 reads it (`None` if the key is
/// shorter than 8 bytes, where etcdutl 3.5 would panic).
pub fn revision_main(key: &[u8]) -> Option<i64> {
    let b: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(i64::from_be_bytes(b))
}

/// What a `key` bucket entry means to etcd 3.6's `snapshot status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevisionKind {
    Put,
    Tombstone,
}

/// etcd 3.6 `BytesToBucketKey`: 17 bytes `main '_' sub`, or 18 with a trailing `'t'` (tombstone);
/// main and sub must not be negative.
pub fn parse_revision_key(key: &[u8]) -> Result<RevisionKind, String> {
    if key.len() != 17 && key.len() != 18 {
        return Err(format!("invalid revision length: {}", key.len()));
    }
    if key[8] != b'_' {
        return Err(format!(
            "invalid separator in bucket key: {:?}",
            key[8] as char
        ));
    }
    if key[0] & 0x80 != 0 || key[9] & 0x80 != 0 {
        return Err("negative revision".into());
    }
    Ok(if key.len() == 18 && key[17] == b't' {
        RevisionKind::Tombstone
    } else {
        RevisionKind::Put
    })
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or("unexpected EOF")?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err("integer overflow".into())
}

fn skip_bytes<'a>(b: &'a [u8], pos: &mut usize) -> Result<&'a [u8], String> {
    let len = varint(b, pos)?;
    if len > i64::MAX as u64 {
        return Err("negative length found during unmarshaling".into());
    }
    let end = pos
        .checked_add(usize::try_from(len).map_err(|_| "length overflow")?)
        .filter(|&e| e <= b.len())
        .ok_or("unexpected EOF")?;
    let s = &b[*pos..end];
    *pos = end;
    Ok(s)
}

/// Field 1 (`key`) of an `mvccpb.KeyValue`, validating the whole message the way gogo's `Unmarshal`
/// does: known fields must have their wire type, unknown fields are skipped, nothing may be truncated.
/// An absent key is empty (a `--bump-revision` entry has an empty value and counts as key "").
pub fn kv_user_key(msg: &[u8]) -> Result<&[u8], String> {
    let mut pos = 0;
    let mut key: &[u8] = &[];
    while pos < msg.len() {
        let tag = varint(msg, &mut pos)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if wire == 4 {
            return Err("proto: KeyValue: wiretype end group for non-group".into());
        }
        if field == 0 || field > i32::MAX as u64 {
            return Err(format!(
                "proto: KeyValue: illegal tag {field} (wire type {wire})"
            ));
        }
        match (field, wire) {
            (1, 2) => key = skip_bytes(msg, &mut pos)?,
            (5, 2) => {
                skip_bytes(msg, &mut pos)?;
            }
            (2 | 3 | 4 | 6, 0) => {
                varint(msg, &mut pos)?;
            }
            (1..=6, _) => {
                return Err(format!("proto: wrong wireType = {wire} for field {field}"));
            }
            (_, 0) => {
                varint(msg, &mut pos)?;
            }
            (_, 1) => pos = skip_fixed(msg, pos, 8)?,
            (_, 5) => pos = skip_fixed(msg, pos, 4)?,
            (_, 2) => {
                skip_bytes(msg, &mut pos)?;
            }
            (_, w) => return Err(format!("proto: illegal wireType {w}")),
        }
    }
    Ok(key)
}

fn skip_fixed(b: &[u8], pos: usize, n: usize) -> Result<usize, String> {
    pos.checked_add(n)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| "unexpected EOF".to_string())
}

/// coreos/go-semver `NewVersion(s).String()`: `major.minor.patch[-pre][+metadata]` with decimal
/// numbers; `None` when it does not parse (etcdutl then reports an empty version).
pub fn semver_string(s: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(s).ok()?;
    let (rest, metadata) = match s.split_once('+') {
        Some((r, m)) => (r, Some(m)),
        None => (s, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    let mut nums = [0i64; 3];
    for (n, p) in nums.iter_mut().zip(&parts) {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *n = p.parse().ok()?;
    }
    let mut out = format!("{}.{}.{}", nums[0], nums[1], nums[2]);
    if let Some(p) = pre.filter(|p| !p.is_empty()) {
        out.push('-');
        out.push_str(p);
    }
    if let Some(m) = metadata.filter(|m| !m.is_empty()) {
        out.push('+');
        out.push_str(m);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: u64, sub: u64, tomb: bool) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&sub.to_be_bytes());
        if tomb {
            k.push(b't');
        }
        k
    }

    #[test]
    fn revision_keys() {
        assert_eq!(revision_main(&rev(42, 1, false)), Some(42));
        assert_eq!(revision_main(b"short"), None);
        assert_eq!(parse_revision_key(&rev(5, 0, false)), Ok(RevisionKind::Put));
        assert_eq!(
            parse_revision_key(&rev(5, 0, true)),
            Ok(RevisionKind::Tombstone)
        );
        assert!(parse_revision_key(&rev(u64::MAX, 0, false)).is_err());
        let mut k = rev(5, 0, false);
        k[8] = b'x';
        assert!(parse_revision_key(&k).is_err());
        assert!(parse_revision_key(b"0123456789").is_err());
    }

    #[test]
    fn kv_key_field() {
        // key="foo", create_revision=2, mod_revision=3, version=1, value="bar", lease=7, unknown 9 fixed32
        let msg = [
            0x0a, 3, b'f', b'o', b'o', 0x10, 2, 0x18, 3, 0x20, 1, 0x2a, 3, b'b', b'a', b'r', 0x30,
            7, 0x4d, 1, 2, 3, 4,
        ];
        assert_eq!(kv_user_key(&msg), Ok(&b"foo"[..]));
        assert_eq!(kv_user_key(&[]), Ok(&b""[..]));
        assert!(kv_user_key(&msg[..4]).is_err());
        assert!(kv_user_key(&[0x08, 1]).is_err(), "field 1 as varint");
        assert!(
            kv_user_key(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
                .is_err()
        );
        assert!(kv_user_key(&[0x0c]).is_err(), "end group");
        assert!(kv_user_key(&[0x80; 12]).is_err(), "varint overflow");
    }

    #[test]
    fn semver() {
        assert_eq!(semver_string(b"3.6.0").as_deref(), Some("3.6.0"));
        assert_eq!(
            semver_string(b"3.6.0-rc.1+x").as_deref(),
            Some("3.6.0-rc.1+x")
        );
        assert_eq!(semver_string(b"3.6"), None);
        assert_eq!(semver_string(b""), None);
        assert_eq!(semver_string(b"a.b.c"), None);
    }
}
