//! (stub: status numbers and printers are being written)

/// `etcdutl snapshot status` numbers (spec §2).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    /// 3.4/3.5 meaning: k/v pairs across all buckets.
    pub total_key: u64,
    pub total_size: u64,
    /// 3.6 meaning of totalKey: distinct live keys in bucket `key`.
    pub live_keys: u64,
    /// 3.6 `version` column: `meta/storageVersion` when parseable, else "".
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compat {
    V35,
    V36,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableStyle {
    /// etcdutl 3.5.30: `┌─┬┐ │ ├┼┤ └┴┘`
    Unicode,
    /// etcdctl 3.4, etcdutl 3.5.1: `+---+`
    Ascii,
}

pub fn render(_s: &Status, _w: crate::cli::WriteOut, _c: Compat, _t: TableStyle) -> String {
    String::new()
}

/// (stub until the engine lands) go-humanize `Bytes`.
pub fn humanize_bytes(n: u64) -> String {
    format!("{n} B")
}
