//! A first look at an uploaded Parquet file's footer, before the Parquet reader sees it.
//!
//! The reader turns the footer's flat, depth-first list of schema elements into a tree by
//! recursion, and then into an arrow schema by recursion again, so a small file whose schema
//! is nested a few thousand levels deep overflows the thread's stack and aborts the node.
//! Manifests are flat (every column is a leaf directly under the root), so this reads the
//! footer's Thrift encoding itself, without recursion beyond a fixed depth, and refuses any
//! group below the root before the reader builds anything.
//!
//! The check must see exactly what the reader will see. The reader takes a known field by its
//! id and reads it as the format specifies, whatever type the file declares for it, and skips
//! unknown fields by their declared type. So this refuses any known field declared with
//! another type than the format's (no writer produces one; a hostile file would use it to make
//! the two readers part ways), follows the format's own types for everything it reads
//! (`SchemaElement`, its `LogicalType` union and their members), requires field ids in
//! increasing order (as writers emit them; a repeated field is refused), and requires the
//! schema to come right after the version, as every writer puts it, so that no field before it
//! needs reading. Only `FileMetaData.schema` is checked; the reader checks the rest.

use std::fmt;

/// The largest footer read into memory. The Parquet reader would hold it whole too; real
/// footers of files with a manifest's few columns are a few kilobytes per row group.
pub(crate) const MAX_FOOTER_BYTES: usize = 64 << 20;
/// How deep skipped Thrift values may nest (the Parquet reader's own skipping stops at 64).
const MAX_SKIP_DEPTH: u8 = 64;

/// Why a footer was refused. Messages are for the uploader, who owns the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FooterError {
    NotParquet,
    EncryptedFooter,
    TooLarge { len: u64 },
    Truncated,
    Malformed(&'static str),
    Nested { column: String },
}

impl fmt::Display for FooterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotParquet => write!(f, "not a Parquet file (no PAR1 magic at its end)"),
            Self::EncryptedFooter => write!(
                f,
                "the Parquet file's footer is encrypted; upload it unencrypted (the node encrypts what it stores)"
            ),
            Self::TooLarge { len } => write!(
                f,
                "the Parquet footer is {len} bytes, above the limit of {MAX_FOOTER_BYTES}"
            ),
            Self::Truncated => write!(f, "the Parquet footer is truncated"),
            Self::Malformed(what) => write!(f, "the Parquet footer is malformed: {what}"),
            Self::Nested { column } => write!(
                f,
                "the Parquet column {column:?} is nested (a group of columns); the schema's columns are all flat"
            ),
        }
    }
}

/// Where the footer lies in a file of `file_len` bytes whose last 8 bytes are `tail`:
/// `(offset, length)`.
pub(crate) fn locate(tail: &[u8; 8], file_len: u64) -> Result<(u64, usize), FooterError> {
    match &tail[4..] {
        b"PAR1" => {}
        b"PARE" => return Err(FooterError::EncryptedFooter),
        _ => return Err(FooterError::NotParquet),
    }
    let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    // The file starts with the 4-byte magic and ends with length and magic.
    if len + 12 > file_len {
        return Err(FooterError::Truncated);
    }
    let len_usize = usize::try_from(len).map_err(|_| FooterError::TooLarge { len })?;
    if len_usize > MAX_FOOTER_BYTES {
        return Err(FooterError::TooLarge { len });
    }
    Ok((file_len - 8 - len, len_usize))
}

/// Checks that every schema element below the root is a leaf.
pub(crate) fn check_flat_schema(footer: &[u8]) -> Result<(), FooterError> {
    let mut r = Compact::new(footer);
    let mut last_id = 0i16;
    let (mut id, mut ty) = r
        .field_header(&mut last_id)?
        .ok_or(FooterError::Malformed("no schema"))?;
    if id == 1 {
        if ty != I32 {
            return Err(FooterError::Malformed("the version is not an i32"));
        }
        r.varint()?;
        (id, ty) = r
            .field_header(&mut last_id)?
            .ok_or(FooterError::Malformed("no schema"))?;
    }
    if (id, ty) != (2, LIST) {
        return Err(FooterError::Malformed(
            "the schema does not follow the version, as every Parquet writer puts it",
        ));
    }
    let (count, elem) = r.list_header()?;
    if elem != STRUCT {
        return Err(FooterError::Malformed("schema elements are not structs"));
    }
    for index in 0..count {
        let (name, children) = read_element(&mut r)?;
        if index > 0 && children.is_some_and(|n| n != 0) {
            return Err(FooterError::Nested {
                column: name.unwrap_or_default(),
            });
        }
    }
    Ok(())
}

/// What a field holds, as the format specifies it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    I32,
    Bool,
    Byte,
    Binary,
    /// A struct with exactly these fields (unknown ones skipped by their declared type).
    Struct(&'static [(i16, Kind)]),
    /// A union: exactly one field, one of these variants (or an unknown one, skipped).
    Union(&'static [(i16, Kind)]),
}

const EMPTY: Kind = Kind::Struct(&[]);
const TIME_UNIT: Kind = Kind::Union(&[(1, EMPTY), (2, EMPTY), (3, EMPTY)]);
const TIME: Kind = Kind::Struct(&[(1, Kind::Bool), (2, TIME_UNIT)]);
/// `LogicalType`, as parquet-format and the reader define it.
const LOGICAL_TYPE: Kind = Kind::Union(&[
    (1, EMPTY),                                               // STRING
    (2, EMPTY),                                               // MAP
    (3, EMPTY),                                               // LIST
    (4, EMPTY),                                               // ENUM
    (5, Kind::Struct(&[(1, Kind::I32), (2, Kind::I32)])),     // DECIMAL
    (6, EMPTY),                                               // DATE
    (7, TIME),                                                // TIME
    (8, TIME),                                                // TIMESTAMP
    (10, Kind::Struct(&[(1, Kind::Byte), (2, Kind::Bool)])),  // INTEGER
    (11, EMPTY),                                              // UNKNOWN
    (12, EMPTY),                                              // JSON
    (13, EMPTY),                                              // BSON
    (14, EMPTY),                                              // UUID
    (15, EMPTY),                                              // FLOAT16
    (16, Kind::Struct(&[(1, Kind::Byte)])),                   // VARIANT
    (17, Kind::Struct(&[(1, Kind::Binary)])),                 // GEOMETRY
    (18, Kind::Struct(&[(1, Kind::Binary), (2, Kind::I32)])), // GEOGRAPHY
]);
/// `SchemaElement`: type, type_length, repetition_type, name, num_children, converted_type,
/// scale, precision, field_id, logical_type.
const SCHEMA_ELEMENT: &[(i16, Kind)] = &[
    (1, Kind::I32),
    (2, Kind::I32),
    (3, Kind::I32),
    (4, Kind::Binary),
    (5, Kind::I32),
    (6, Kind::I32),
    (7, Kind::I32),
    (8, Kind::I32),
    (9, Kind::I32),
    (10, LOGICAL_TYPE),
];

/// One `SchemaElement`: its name (shortened for messages) and `num_children`.
fn read_element(r: &mut Compact<'_>) -> Result<(Option<String>, Option<i32>), FooterError> {
    let (mut name, mut children) = (None, None);
    let mut last_id = 0i16;
    while let Some((id, ty)) = r.next_field(&mut last_id)? {
        match (id, known(SCHEMA_ELEMENT, id)) {
            (4, Some(_)) => {
                expect(ty, BINARY)?;
                let shown: String = String::from_utf8_lossy(r.binary()?)
                    .chars()
                    .take(64)
                    .collect();
                name = Some(shown);
            }
            (5, Some(_)) => {
                expect(ty, I32)?;
                children = Some(r.i32()?);
            }
            (_, Some(kind)) => r.value(kind, ty, MAX_SKIP_DEPTH)?,
            (_, None) => r.skip(ty, MAX_SKIP_DEPTH)?,
        }
    }
    Ok((name, children))
}

fn known(fields: &[(i16, Kind)], id: i16) -> Option<Kind> {
    fields.iter().find(|(f, _)| *f == id).map(|(_, k)| *k)
}

fn expect(declared: u8, wanted: u8) -> Result<(), FooterError> {
    if declared == wanted {
        Ok(())
    } else {
        Err(FooterError::Malformed(
            "a field is declared with another type than the format's",
        ))
    }
}

// Thrift compact protocol type codes.
const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;
const UUID: u8 = 13;

/// A reader of Thrift's compact protocol over a byte slice.
struct Compact<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Compact<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn byte(&mut self) -> Result<u8, FooterError> {
        let b = *self.bytes.get(self.pos).ok_or(FooterError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FooterError> {
        let end = self.pos.checked_add(n).ok_or(FooterError::Truncated)?;
        let out = self
            .bytes
            .get(self.pos..end)
            .ok_or(FooterError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn varint(&mut self) -> Result<u64, FooterError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(FooterError::Malformed("a varint is too long"))
    }

    fn zigzag(&mut self) -> Result<i64, FooterError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn i32(&mut self) -> Result<i32, FooterError> {
        i32::try_from(self.zigzag()?).map_err(|_| FooterError::Malformed("an i32 is out of range"))
    }

    fn binary(&mut self) -> Result<&'a [u8], FooterError> {
        let len = usize::try_from(self.varint()?).map_err(|_| FooterError::Truncated)?;
        self.take(len)
    }

    /// The next field's id and type, or `None` at the struct's end. `last_id` carries the
    /// previous field id, which short headers are relative to.
    fn field_header(&mut self, last_id: &mut i16) -> Result<Option<(i16, u8)>, FooterError> {
        let b = self.byte()?;
        if b == 0 {
            return Ok(None);
        }
        let (delta, ty) = (b >> 4, b & 0x0f);
        let id = if delta == 0 {
            i16::try_from(self.zigzag()?).map_err(|_| FooterError::Malformed("a field id"))?
        } else {
            last_id
                .checked_add(i16::from(delta))
                .ok_or(FooterError::Malformed("a field id"))?
        };
        *last_id = id;
        Ok(Some((id, ty)))
    }

    /// Like `field_header`, refusing an id that does not follow the previous one in
    /// increasing order (writers emit fields in order; a repeated field could be read
    /// differently by another reader).
    fn next_field(&mut self, last_id: &mut i16) -> Result<Option<(i16, u8)>, FooterError> {
        let before = *last_id;
        let header = self.field_header(last_id)?;
        if let Some((id, _)) = header
            && id <= before
        {
            return Err(FooterError::Malformed("fields out of order or repeated"));
        }
        Ok(header)
    }

    /// Reads a value the format specifies as `kind`, declared in the file as `declared`.
    fn value(&mut self, kind: Kind, declared: u8, depth: u8) -> Result<(), FooterError> {
        let depth = depth
            .checked_sub(1)
            .ok_or(FooterError::Malformed("values nest too deeply"))?;
        match kind {
            Kind::I32 => {
                expect(declared, I32)?;
                self.varint().map(drop)
            }
            Kind::Bool if declared == BOOL_TRUE || declared == BOOL_FALSE => Ok(()),
            Kind::Bool => expect(declared, BOOL_TRUE),
            Kind::Byte => {
                expect(declared, BYTE)?;
                self.take(1).map(drop)
            }
            Kind::Binary => {
                expect(declared, BINARY)?;
                self.binary().map(drop)
            }
            Kind::Struct(fields) => {
                expect(declared, STRUCT)?;
                let mut last_id = 0i16;
                while let Some((id, ty)) = self.next_field(&mut last_id)? {
                    match known(fields, id) {
                        Some(k) => self.value(k, ty, depth)?,
                        None => self.skip(ty, depth)?,
                    }
                }
                Ok(())
            }
            Kind::Union(variants) => {
                expect(declared, STRUCT)?;
                let mut last_id = 0i16;
                let (id, ty) = self
                    .field_header(&mut last_id)?
                    .ok_or(FooterError::Malformed("an empty union"))?;
                match known(variants, id) {
                    Some(k) => self.value(k, ty, depth)?,
                    None => self.skip(ty, depth)?,
                }
                if self.field_header(&mut last_id)?.is_some() {
                    return Err(FooterError::Malformed("a union with more than one member"));
                }
                Ok(())
            }
        }
    }

    fn list_header(&mut self) -> Result<(usize, u8), FooterError> {
        let b = self.byte()?;
        let short = usize::from(b >> 4);
        let count = if short == 15 {
            usize::try_from(self.varint()?).map_err(|_| FooterError::Truncated)?
        } else {
            short
        };
        // Every element takes at least one byte, so a count beyond what is left is a lie.
        if count > self.bytes.len() - self.pos {
            return Err(FooterError::Truncated);
        }
        Ok((count, b & 0x0f))
    }

    /// Skips one value of type `ty`, nesting at most `depth` levels.
    fn skip(&mut self, ty: u8, depth: u8) -> Result<(), FooterError> {
        let depth = depth
            .checked_sub(1)
            .ok_or(FooterError::Malformed("values nest too deeply"))?;
        match ty {
            BOOL_TRUE | BOOL_FALSE => Ok(()),
            BYTE => self.take(1).map(drop),
            I16 | I32 | I64 => self.varint().map(drop),
            DOUBLE => self.take(8).map(drop),
            BINARY => self.binary().map(drop),
            UUID => self.take(16).map(drop),
            LIST | SET => {
                let (count, elem) = self.list_header()?;
                for _ in 0..count {
                    self.skip_element(elem, depth)?;
                }
                Ok(())
            }
            MAP => {
                let count = usize::try_from(self.varint()?).map_err(|_| FooterError::Truncated)?;
                if count == 0 {
                    return Ok(());
                }
                if count > self.bytes.len() - self.pos {
                    return Err(FooterError::Truncated);
                }
                let kinds = self.byte()?;
                for _ in 0..count {
                    self.skip_element(kinds >> 4, depth)?;
                    self.skip_element(kinds & 0x0f, depth)?;
                }
                Ok(())
            }
            STRUCT => {
                let mut last_id = 0i16;
                while let Some((_, field_ty)) = self.field_header(&mut last_id)? {
                    self.skip(field_ty, depth)?;
                }
                Ok(())
            }
            _ => Err(FooterError::Malformed("an unknown value type")),
        }
    }

    /// Inside lists, sets and maps a boolean is a whole byte, not part of a field header.
    fn skip_element(&mut self, ty: u8, depth: u8) -> Result<(), FooterError> {
        if ty == BOOL_TRUE || ty == BOOL_FALSE {
            self.take(1).map(drop)
        } else {
            self.skip(ty, depth)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A footer's bytes (without length and magic) for a schema given as
    /// `(name, num_children)` in depth-first order, written with the compact protocol.
    fn footer(elements: &[(&str, Option<i32>)]) -> Vec<u8> {
        let mut out = vec![0x15, 0x02]; // field 1 (version), i32 1
        out.push(0x19); // field 2, list
        if elements.len() < 15 {
            out.push(((elements.len() as u8) << 4) | STRUCT);
        } else {
            out.push(0xf0 | STRUCT);
            varint(&mut out, elements.len() as u64);
        }
        for (name, children) in elements {
            out.push(0x48); // field 4, binary
            varint(&mut out, name.len() as u64);
            out.extend_from_slice(name.as_bytes());
            if let Some(n) = children {
                out.push(0x15); // field 5, i32
                varint(&mut out, ((n << 1) ^ (n >> 31)) as u32 as u64);
            }
            out.push(0);
        }
        out.extend_from_slice(&[0x16, 0x04]); // field 3 (num_rows), i64 2
        out.push(0);
        out
    }

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    #[test]
    fn a_flat_schema_passes_and_any_group_below_the_root_is_refused() {
        let flat = footer(&[("schema", Some(2)), ("age", None), ("bmi", Some(0))]);
        assert_eq!(check_flat_schema(&flat), Ok(()));
        let nested = footer(&[("schema", Some(1)), ("outer", Some(1)), ("age", None)]);
        assert_eq!(
            check_flat_schema(&nested),
            Err(FooterError::Nested {
                column: "outer".into()
            })
        );
    }

    #[test]
    fn a_schema_nested_a_hundred_thousand_levels_is_refused_without_recursion() {
        let mut elements = vec![("schema", Some(1))];
        elements.extend(std::iter::repeat_n(("g", Some(1)), 100_000));
        elements.push(("leaf", None));
        let deep = footer(&elements);
        // On a small stack, as a node's worker threads have: a recursive reader overflows.
        let outcome = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || check_flat_schema(&deep))
            .expect("thread")
            .join()
            .expect("no overflow");
        assert!(matches!(outcome, Err(FooterError::Nested { .. })));
    }

    #[test]
    fn hostile_encodings_are_errors_not_panics_or_huge_allocations() {
        // Deeply nested structs in an unknown field of a schema element (skipped).
        let mut deep = vec![0x15, 0x02, 0x19, 0x1c, 0xbc]; // version; 1 element; field 11
        deep.extend(std::iter::repeat_n(0x1c, 10_000));
        assert_eq!(
            check_flat_schema(&deep),
            Err(FooterError::Malformed("values nest too deeply"))
        );
        // A list claiming more elements than bytes remain.
        let lying = vec![0x29, 0xfc, 0xff, 0xff, 0xff, 0x0f]; // field 2 right away
        assert_eq!(check_flat_schema(&lying), Err(FooterError::Truncated));
        // Every prefix that cuts into the schema fails cleanly (the check stops reading
        // after the schema; the Parquet reader checks the rest).
        let flat = footer(&[("schema", Some(2)), ("age", None), ("bmi", None)]);
        let schema_end = flat.len() - 3;
        for n in 0..schema_end {
            assert!(check_flat_schema(&flat[..n]).is_err(), "prefix {n}");
        }
        assert_eq!(check_flat_schema(&flat[..schema_end]), Ok(()));
        // Arbitrary bytes never panic.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2_000 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = check_flat_schema(&bytes);
        }
    }

    #[test]
    fn a_known_field_declared_with_another_type_is_refused() {
        // num_children declared as an i64 (type 6) instead of an i32: the Parquet reader
        // would read it as its i32 anyway and see a group.
        let mut sneaky = vec![0x15, 0x02, 0x19, 0x2c]; // version; schema: 2 structs
        sneaky.extend_from_slice(&[0x48, 1, b's', 0x15, 0x02, 0x00]); // root, 1 child
        sneaky.extend_from_slice(&[0x48, 1, b'g', 0x16, 0x02, 0x00]); // "g", i64 children
        assert!(matches!(
            check_flat_schema(&sneaky),
            Err(FooterError::Malformed(_))
        ));
        // The version declared as binary, to hide a second schema inside it.
        let hidden = vec![0x18, 0x02, 0x19, 0x0c, 0x19, 0x0c, 0x00];
        assert!(matches!(
            check_flat_schema(&hidden),
            Err(FooterError::Malformed(_))
        ));
        // A field other than the version before the schema.
        let late = vec![0x36, 0x00, 0x0f, 0x02, 0x0c];
        assert!(matches!(
            check_flat_schema(&late),
            Err(FooterError::Malformed(_))
        ));
        // num_children given twice: whichever a reader keeps, it is refused.
        let twice = vec![
            0x15, 0x02, 0x19, 0x2c, 0x48, 1, b's', 0x15, 0x02, 0x00, 0x48, 1, b'g', 0x15, 0x02,
            0x05, 0x0a, 0x00, 0x00,
        ];
        assert!(matches!(
            check_flat_schema(&twice),
            Err(FooterError::Malformed(_))
        ));
    }

    #[test]
    fn logical_types_as_writers_emit_them_pass() {
        // A string column (LogicalType STRING) and a timestamp (TIMESTAMP, MICROS).
        let mut f = vec![0x15, 0x02, 0x19, 0x3c]; // version; schema: 3 structs
        f.extend_from_slice(&[0x48, 1, b's', 0x15, 0x04, 0x00]); // root, 2 children
        // name, type BYTE_ARRAY (6), repetition OPTIONAL (1), logical_type { STRING {} }
        f.extend_from_slice(&[0x15, 0x0c, 0x25, 0x02, 0x18, 1, b'a']);
        f.extend_from_slice(&[0x6c, 0x1c, 0x00, 0x00, 0x00]);
        // type INT64 (2), repetition REQUIRED, name, logical_type { TIMESTAMP { true, MICROS {} } }
        f.extend_from_slice(&[0x15, 0x04, 0x25, 0x00, 0x18, 1, b't']);
        f.extend_from_slice(&[0x6c, 0x8c, 0x11, 0x1c, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(check_flat_schema(&f), Ok(()));
    }

    #[test]
    fn the_footer_is_located_from_the_tail() {
        let mut tail = [0u8; 8];
        tail[..4].copy_from_slice(&100u32.to_le_bytes());
        tail[4..].copy_from_slice(b"PAR1");
        assert_eq!(locate(&tail, 1_000), Ok((892, 100)));
        assert_eq!(locate(&tail, 100), Err(FooterError::Truncated));
        tail[4..].copy_from_slice(b"PARE");
        assert_eq!(locate(&tail, 1_000), Err(FooterError::EncryptedFooter));
        tail[4..].copy_from_slice(b"NOPE");
        assert_eq!(locate(&tail, 1_000), Err(FooterError::NotParquet));
    }
}
