//! Checks a Parquet file's page headers before the `parquet` crate reads it: the crate
//! allocates each page's declared uncompressed size before decompressing, so a 3 KB file
//! claiming 2 GiB pages made it allocate 3.8 GB (found by `fuzz/`), and a column chunk outside
//! the file made it panic. Every column chunk must lie inside the file, and every page within
//! it must declare an uncompressed size that its compressed bytes can produce: at most
//! [`MAX_EXPANSION`] times larger (Snappy, the only codec Ember reads besides none, expands at
//! most about 32 times).
//!
//! Page headers are Thrift compact-protocol structs; only the two sizes are read, every other
//! field is skipped (nesting bounded by [`MAX_DEPTH`]).

use parquet::file::metadata::ParquetMetaData;

/// The most a page may grow when decompressed, plus [`SLACK`] bytes for tiny pages.
pub const MAX_EXPANSION: i64 = 64;
const SLACK: i64 = 4096;
/// Thrift structs in a page header nest two or three deep; deeper is hostile.
const MAX_DEPTH: usize = 16;

/// `Err` says what is wrong with the file's page layout.
pub fn check(bytes: &[u8], metadata: &ParquetMetaData) -> Result<(), String> {
    let file_len = bytes.len() as i64;
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for (c, column) in group.columns().iter().enumerate() {
            let start = column.dictionary_page_offset().unwrap_or(column.data_page_offset());
            let len = column.compressed_size();
            let end = start.checked_add(len).filter(|&end| start >= 0 && len >= 0 && end <= file_len);
            let Some(end) = end else {
                return Err(format!("row group {g}, column {c} lies outside the file"));
            };
            let mut pos = start;
            while pos < end {
                let mut reader = Compact { bytes: &bytes[pos as usize..end as usize], pos: 0 };
                let page =
                    reader.page_sizes().map_err(|e| format!("row group {g}, column {c}: bad page header ({e})"))?;
                let (uncompressed, compressed) = (page.uncompressed, page.compressed);
                if compressed < 0
                    || uncompressed < 0
                    || uncompressed > compressed.saturating_mul(MAX_EXPANSION).saturating_add(SLACK)
                {
                    return Err(format!(
                        "row group {g}, column {c}: a page claims {uncompressed} bytes from {compressed} compressed ones"
                    ));
                }
                // A dictionary value takes at least one bit (booleans) and mostly four bytes or more.
                if page.dictionary_values.is_some_and(|n| n < 0 || n > uncompressed.saturating_mul(8).saturating_add(8))
                {
                    return Err(format!(
                        "row group {g}, column {c}: a dictionary page claims more values than its bytes hold"
                    ));
                }
                pos = pos.saturating_add(reader.pos as i64).saturating_add(compressed);
            }
        }
    }
    Ok(())
}

/// Checks a Parquet footer's schema before the crate decodes it: the crate reserves room for
/// each schema node's declared `num_children`, so a 3 KB file claiming about a billion children
/// made it reserve 7 GB (found by `fuzz/`). A node has at most as many children as the schema
/// has elements. A footer too short or malformed for this check is left to the crate's errors.
pub fn check_footer(bytes: &[u8]) -> Result<(), String> {
    let n = bytes.len();
    let Some(tail) = n.checked_sub(8).and_then(|at| bytes.get(at..at + 4)) else { return Ok(()) };
    let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
    let Some(start) = (n - 8).checked_sub(len) else { return Ok(()) };
    let mut reader = Compact { bytes: &bytes[start..n - 8], pos: 0 };
    reader.fields(|reader, field, kind| match (field, kind) {
        (2, 9) => reader.schema_children(),
        _ => reader.skip(kind, 0),
    })
}

#[derive(Default)]
struct PageSizes {
    uncompressed: i64,
    compressed: i64,
    dictionary_values: Option<i64>,
}

/// A reader of the Thrift compact protocol over one page header.
struct Compact<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Compact<'_> {
    /// `PageHeader`'s `uncompressed_page_size` (field 2), `compressed_page_size` (field 3) and,
    /// for a dictionary page (field 7), its `num_values` (the crate reserves room for that many
    /// values before reading them).
    fn page_sizes(&mut self) -> Result<PageSizes, String> {
        let mut sizes = PageSizes::default();
        let (mut uncompressed, mut compressed) = (None, None);
        self.fields(|reader, field, kind| match (field, kind) {
            (2, 5) => reader.zigzag().map(|v| uncompressed = Some(v)),
            (3, 5) => reader.zigzag().map(|v| compressed = Some(v)),
            (7, 12) => reader.fields(|reader, field, kind| match (field, kind) {
                (1, 5) => reader.zigzag().map(|v| sizes.dictionary_values = Some(v)),
                _ => reader.skip(kind, 1),
            }),
            _ => reader.skip(kind, 0),
        })?;
        sizes.uncompressed = uncompressed.ok_or("no uncompressed size")?;
        sizes.compressed = compressed.ok_or("no compressed size")?;
        Ok(sizes)
    }

    /// `FileMetaData.schema` (a list of `SchemaElement`): every `num_children` (field 5) must
    /// be at most the number of elements.
    fn schema_children(&mut self) -> Result<(), String> {
        let header = self.byte()?;
        let element = header & 0x0f;
        let count = if header >> 4 == 15 { self.varint()? } else { (header >> 4) as u64 };
        for _ in 0..count {
            if element != 12 {
                self.skip_element(element, 1)?;
                continue;
            }
            self.fields(|reader, field, kind| match (field, kind) {
                (5, 5) => match reader.zigzag()? {
                    children if children < 0 || children as u64 > count => {
                        Err(format!("a schema node claims {children} children in a schema of {count} elements"))
                    }
                    _ => Ok(()),
                },
                _ => reader.skip(kind, 1),
            })?;
        }
        Ok(())
    }

    /// Reads a struct's fields up to its STOP, handing each (field id, compact type) to `each`,
    /// which must read or skip the value.
    fn fields(&mut self, mut each: impl FnMut(&mut Self, i64, u8) -> Result<(), String>) -> Result<(), String> {
        let mut field = 0i64;
        loop {
            let header = self.byte()?;
            let kind = header & 0x0f;
            if kind == 0 {
                return Ok(());
            }
            let delta = (header >> 4) as i64;
            field = if delta == 0 { self.zigzag()? } else { field + delta };
            each(self, field, kind)?;
        }
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.pos).ok_or("ends early")?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn zigzag(&mut self) -> Result<i64, String> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn advance(&mut self, n: u64) -> Result<(), String> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.bytes.len())
            .ok_or("ends early")?;
        self.pos = end;
        Ok(())
    }

    /// Skips one element of a list, set or map, where booleans take a byte each.
    fn skip_element(&mut self, kind: u8, depth: usize) -> Result<(), String> {
        if kind == 1 || kind == 2 {
            self.advance(1)
        } else {
            self.skip(kind, depth)
        }
    }

    /// Skips one value of compact type `kind`.
    fn skip(&mut self, kind: u8, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("nested too deep".into());
        }
        match kind {
            1 | 2 => Ok(()),                    // a boolean field lives in its header
            3 => self.advance(1),               // byte
            4..=6 => self.varint().map(|_| ()), // i16, i32, i64
            7 => self.advance(8),               // double
            8 => {
                let n = self.varint()?;
                self.advance(n)
            }
            9 | 10 => {
                let header = self.byte()?;
                let element = header & 0x0f;
                let n = if header >> 4 == 15 { self.varint()? } else { (header >> 4) as u64 };
                for _ in 0..n {
                    self.skip_element(element, depth + 1)?;
                }
                Ok(())
            }
            11 => {
                let n = self.varint()?;
                if n == 0 {
                    return Ok(());
                }
                let types = self.byte()?;
                for _ in 0..n {
                    self.skip_element(types >> 4, depth + 1)?;
                    self.skip_element(types & 0x0f, depth + 1)?;
                }
                Ok(())
            }
            12 => loop {
                let header = self.byte()?;
                let inner = header & 0x0f;
                if inner == 0 {
                    return Ok(());
                }
                if header >> 4 == 0 {
                    self.zigzag()?;
                }
                self.skip(inner, depth + 1)?;
            },
            13 => self.advance(16), // uuid
            other => Err(format!("unknown Thrift type {other}")),
        }
    }
}
