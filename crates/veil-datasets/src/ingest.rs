//! Upload ingestion: bytes stream in, rows are parsed and validated against the manifest,
//! and valid rows are written to an encrypted Parquet file, which becomes visible only when
//! the whole upload is valid (write to a temp file, then rename).
//!
//! CSV is decoded incrementally as it arrives. Parquet needs random access (its footer is at
//! the end), so it is first spooled to disk sealed under an ephemeral key. Plaintext rows
//! never touch the disk either way.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::csv::reader::ReaderBuilder;
use arrow::datatypes::{Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, Length};
use tokio::sync::mpsc;
use veil_crypto::DataKey;
use veil_crypto::spool::{CHUNK, SpoolCipher, sealed_span};
use veil_dp::Manifest;
use veil_dp::exact::MAX_ROWS;

use crate::schema::{Report, Validator, Violation, field, stored_schema, to_stored};

/// Rows per decoded batch.
const BATCH_ROWS: usize = 64 * 1024;
/// Rows per Parquet row group (also DataFusion's unit of parallelism).
const ROW_GROUP_ROWS: usize = 1 << 20;
/// The longest accepted CSV header line.
const MAX_HEADER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Rows break the manifest. Nothing was stored.
    #[error("{count} row problem(s) found; nothing was stored")]
    Rejected {
        violations: Vec<Violation>,
        /// Problems found (validation stops after 1000).
        count: u64,
    },
    /// The file cannot be read as the declared format, or its columns do not match.
    #[error("{0}")]
    Malformed(String),
    #[error("the upload exceeds the node's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the dataset has more than {limit} rows")]
    TooManyRows { limit: u64 },
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    /// Disk or internal failure: for logs.
    #[error("storage error: {0}")]
    Io(String),
}

fn io(e: impl std::fmt::Display) -> IngestError {
    IngestError::Io(e.to_string())
}

/// Removes a file when dropped unless disarmed (temp outputs, spools).
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    fn disarm(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The encrypted Parquet writer for a dataset file.
struct EncryptedWriter {
    writer: ArrowWriter<BufWriter<File>>,
    temp: TempFile,
    schema: SchemaRef,
    rows: u64,
}

impl EncryptedWriter {
    fn create(
        temp_path: PathBuf,
        schema: SchemaRef,
        key: &DataKey,
        aad: &str,
    ) -> Result<Self, IngestError> {
        let temp = TempFile::new(temp_path);
        let encryption = FileEncryptionProperties::builder(key.expose().to_vec())
            .with_aad_prefix(aad.as_bytes().to_vec())
            .with_aad_prefix_storage(false)
            .build()
            .map_err(io)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .with_file_encryption_properties(encryption)
            .build();
        let file = File::create(&temp.path).map_err(io)?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            schema.clone(),
            Some(props),
        )
        .map_err(io)?;
        Ok(Self {
            writer,
            temp,
            schema,
            rows: 0,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), IngestError> {
        self.rows += batch.num_rows() as u64;
        if self.rows > MAX_ROWS {
            return Err(IngestError::TooManyRows { limit: MAX_ROWS });
        }
        let stored = to_stored(&self.schema, batch).map_err(IngestError::Malformed)?;
        self.writer.write(&stored).map_err(io)
    }

    /// Flushes, syncs and moves the file to `final_path`.
    fn finish(self, final_path: &Path) -> Result<(u64, u64), IngestError> {
        let Self {
            writer, temp, rows, ..
        } = self;
        let buf = writer.into_inner().map_err(io)?;
        let file = buf.into_inner().map_err(|e| io(e.error()))?;
        file.sync_all().map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        drop(file);
        let temp_path = temp.disarm();
        std::fs::rename(&temp_path, final_path).map_err(|e| {
            let _ = std::fs::remove_file(&temp_path);
            io(e)
        })?;
        if let Some(dir) = final_path.parent() {
            crate::sync_dir(dir).map_err(io)?;
        }
        Ok((rows, size))
    }
}

/// Everything the blocking worker needs.
pub(crate) struct Job {
    pub manifest: Manifest,
    pub format: Format,
    pub key: DataKey,
    pub aad: String,
    pub temp_path: PathBuf,
    pub final_path: PathBuf,
    pub spool_path: PathBuf,
}

/// Runs the CPU-bound part of an upload, reading chunks from `rx` until it closes.
pub(crate) fn run(job: Job, mut rx: mpsc::Receiver<Bytes>) -> Result<(u64, u64), IngestError> {
    let schema = stored_schema(&job.manifest);
    let mut writer = EncryptedWriter::create(job.temp_path.clone(), schema, &job.key, &job.aad)?;
    let mut sink = Sink {
        validator: Validator::new(&job.manifest),
        report: Report::default(),
        next_row: 1,
    };
    match job.format {
        Format::Csv => {
            let mut csv = CsvStream::default();
            while let Some(chunk) = rx.blocking_recv() {
                for batch in csv.feed(&job.manifest, &chunk)? {
                    sink.push(batch, &mut writer)?;
                }
                if sink.report.full() {
                    break;
                }
            }
            if !sink.report.full() {
                for batch in csv.finish(&job.manifest)? {
                    sink.push(batch, &mut writer)?;
                }
            }
        }
        Format::Parquet => {
            let spool = Spool::write(&job.spool_path, &mut rx)?;
            check_footer(&spool)?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(spool)
                .map_err(|e| IngestError::Malformed(format!("not a readable Parquet file: {e}")))?;
            let file_schema = reader.schema().clone();
            let casts = parquet_casts(&job.manifest, &file_schema)?;
            let batches = reader.with_batch_size(BATCH_ROWS).build().map_err(|e| {
                IngestError::Malformed(format!("cannot read the Parquet file: {e}"))
            })?;
            for batch in batches {
                let batch = batch.map_err(|e| {
                    IngestError::Malformed(format!("cannot read the Parquet file: {e}"))
                })?;
                match cast_batch(&casts, &batch, sink.next_row, &mut sink.report)? {
                    Some(b) => sink.push(b, &mut writer)?,
                    None => break,
                }
                if sink.report.full() {
                    break;
                }
            }
        }
    }
    if sink.report.count > 0 {
        return Err(IngestError::Rejected {
            violations: sink.report.listed,
            count: sink.report.count,
        });
    }
    writer.finish(&job.final_path)
}

/// Validates batches in order and writes them while no problem has been found.
struct Sink<'m> {
    validator: Validator<'m>,
    report: Report,
    /// The 1-based row number of the next batch's first row.
    next_row: u64,
}

impl Sink<'_> {
    fn push(
        &mut self,
        batch: RecordBatch,
        writer: &mut EncryptedWriter,
    ) -> Result<(), IngestError> {
        self.validator
            .validate(&batch, self.next_row, &mut self.report);
        self.next_row += batch.num_rows() as u64;
        if self.report.count == 0 {
            writer.write(&batch)
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// CSV

/// Incremental CSV decoding: the header picks the column order, then arrow-csv decodes.
#[derive(Default)]
struct CsvStream {
    header: Vec<u8>,
    decoder: Option<arrow::csv::reader::Decoder>,
}

fn parse_header(line: &str) -> Vec<String> {
    line.trim_start_matches('\u{feff}')
        .trim_end_matches(['\r', '\n'])
        .split(',')
        .map(|s| s.trim().trim_matches('"').trim().to_string())
        .collect()
}

/// Removes the raw row that arrow-csv quotes in parse errors: reports carry positions and
/// reasons, and the message may end up in logs.
fn sanitize(e: &arrow::error::ArrowError) -> String {
    let s = e.to_string();
    let s = match s.find(". Row data:") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    s.replace("Csv error: ", "").replace("Parser error: ", "")
}

impl CsvStream {
    fn start(&mut self, m: &Manifest) -> Result<(), IngestError> {
        let text = std::str::from_utf8(&self.header)
            .map_err(|_| IngestError::Malformed("the CSV header is not UTF-8".into()))?;
        let names = parse_header(text);
        let mut fields = Vec::with_capacity(names.len());
        for n in &names {
            let c = m.column(n).ok_or_else(|| {
                IngestError::Malformed(format!(
                    "the CSV has a column {n:?} that the schema does not declare"
                ))
            })?;
            if fields
                .iter()
                .any(|f: &arrow::datatypes::Field| f.name() == n)
            {
                return Err(IngestError::Malformed(format!(
                    "the CSV header repeats the column {n:?}"
                )));
            }
            fields.push(field(c));
        }
        if let Some(missing) = m.columns.iter().find(|c| !names.contains(&c.name)) {
            return Err(IngestError::Malformed(format!(
                "the CSV lacks the declared column {:?}",
                missing.name
            )));
        }
        let decoder = ReaderBuilder::new(Arc::new(Schema::new(fields)))
            .with_header(true)
            .with_batch_size(BATCH_ROWS)
            .build_decoder();
        self.decoder = Some(decoder);
        Ok(())
    }

    fn feed(&mut self, m: &Manifest, mut chunk: &[u8]) -> Result<Vec<RecordBatch>, IngestError> {
        let mut out = Vec::new();
        if self.decoder.is_none() {
            // Buffer until the header line is complete; it is fed to the decoder too, which
            // skips it.
            match chunk.iter().position(|b| *b == b'\n') {
                None => {
                    self.header.extend_from_slice(chunk);
                    if self.header.len() > MAX_HEADER_BYTES {
                        return Err(IngestError::Malformed(
                            "the CSV header line is too long".into(),
                        ));
                    }
                    return Ok(out);
                }
                Some(i) => {
                    self.header.extend_from_slice(&chunk[..=i]);
                    self.start(m)?;
                    let header = std::mem::take(&mut self.header);
                    self.decode_all(&header, &mut out)?;
                    chunk = &chunk[i + 1..];
                }
            }
        }
        self.decode_all(chunk, &mut out)?;
        Ok(out)
    }

    fn decode_all(
        &mut self,
        mut buf: &[u8],
        out: &mut Vec<RecordBatch>,
    ) -> Result<(), IngestError> {
        let Some(d) = self.decoder.as_mut() else {
            return Ok(());
        };
        while !buf.is_empty() {
            let n = d
                .decode(buf)
                .map_err(|e| IngestError::Malformed(sanitize(&e)))?;
            buf = &buf[n..];
            if d.capacity() == 0 || n == 0 {
                match d
                    .flush()
                    .map_err(|e| IngestError::Malformed(sanitize(&e)))?
                {
                    Some(b) => out.push(b),
                    None if n == 0 => break,
                    None => {}
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, m: &Manifest) -> Result<Vec<RecordBatch>, IngestError> {
        if self.decoder.is_none() {
            if self.header.iter().all(u8::is_ascii_whitespace) {
                return Err(IngestError::Malformed("the CSV file is empty".into()));
            }
            self.header.push(b'\n');
            self.start(m)?;
            let header = std::mem::take(&mut self.header);
            let mut out = Vec::new();
            self.decode_all(&header, &mut out)?;
        }
        let mut out = Vec::new();
        if let Some(d) = self.decoder.as_mut() {
            d.decode(&[])
                .map_err(|e| IngestError::Malformed(sanitize(&e)))?;
            if let Some(b) = d
                .flush()
                .map_err(|e| IngestError::Malformed(sanitize(&e)))?
            {
                out.push(b);
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Parquet

/// Refuses a Parquet file whose schema the reader could not safely build (see `footer`).
fn check_footer(spool: &SharedSpool) -> Result<(), IngestError> {
    let refuse = |e: crate::footer::FooterError| IngestError::Malformed(e.to_string());
    let read = |start: u64, len: usize| {
        spool
            .0
            .read_range(start, len)
            .map_err(|e| IngestError::Malformed(format!("not a readable Parquet file: {e}")))
    };
    let file_len = spool.len();
    if file_len < 12 {
        return Err(refuse(crate::footer::FooterError::NotParquet));
    }
    let tail: [u8; 8] = read(file_len - 8, 8)?
        .try_into()
        .map_err(|_| refuse(crate::footer::FooterError::Truncated))?;
    let (offset, len) = crate::footer::locate(&tail, file_len).map_err(refuse)?;
    crate::footer::check_flat_schema(&read(offset, len)?).map_err(refuse)
}

/// How each manifest column is read from an uploaded Parquet file.
struct ColumnCast {
    name: String,
    target: arrow::datatypes::DataType,
    nullable: bool,
}

fn parquet_casts(m: &Manifest, file: &SchemaRef) -> Result<Vec<ColumnCast>, IngestError> {
    for f in file.fields() {
        if m.column(f.name()).is_none() {
            return Err(IngestError::Malformed(format!(
                "the Parquet file has a column {:?} that the schema does not declare",
                f.name()
            )));
        }
    }
    m.columns
        .iter()
        .map(|c| {
            if file.field_with_name(&c.name).is_err() {
                return Err(IngestError::Malformed(format!(
                    "the Parquet file lacks the declared column {:?}",
                    c.name
                )));
            }
            Ok(ColumnCast {
                name: c.name.clone(),
                target: crate::schema::arrow_type(&c.ty),
                nullable: c.nullable,
            })
        })
        .collect()
}

/// Casts a Parquet batch to the manifest's types; values that do not convert are reported.
fn cast_batch(
    casts: &[ColumnCast],
    batch: &RecordBatch,
    first_row: u64,
    report: &mut Report,
) -> Result<Option<RecordBatch>, IngestError> {
    let strict = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let mut fields = Vec::with_capacity(casts.len());
    let mut cols = Vec::with_capacity(casts.len());
    for c in casts {
        let col = batch
            .column_by_name(&c.name)
            .ok_or_else(|| IngestError::Malformed(format!("column {} is missing", c.name)))?;
        let converted = if col.data_type() == &c.target {
            col.clone()
        } else {
            match cast_with_options(col, &c.target, &strict) {
                Ok(a) => a,
                Err(e) => {
                    report.add(Violation {
                        row: first_row,
                        column: Some(c.name.clone()),
                        reason: format!(
                            "values of type {} cannot be read as {}: {}",
                            col.data_type(),
                            c.target,
                            sanitize(&e)
                        ),
                    });
                    return Ok(None);
                }
            }
        };
        fields.push(arrow::datatypes::Field::new(
            &c.name,
            c.target.clone(),
            c.nullable,
        ));
        cols.push(converted);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map(Some)
        .map_err(|e| IngestError::Malformed(e.to_string()))
}

/// A sealed temporary copy of an uploaded Parquet file, readable at random offsets.
struct Spool {
    file: File,
    cipher: SpoolCipher,
    plain_len: u64,
    _temp: TempFile,
}

impl Spool {
    fn write(path: &Path, rx: &mut mpsc::Receiver<Bytes>) -> Result<SharedSpool, IngestError> {
        let temp = TempFile::new(path.to_path_buf());
        let cipher = SpoolCipher::generate();
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
        let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
        let mut index: u32 = 0;
        let mut plain_len = 0u64;
        // A chunk is sealed only once the next byte arrives, so the last chunk is known.
        while let Some(bytes) = rx.blocking_recv() {
            let mut rest: &[u8] = &bytes;
            while !rest.is_empty() {
                if pending.len() == CHUNK {
                    out.write_all(&cipher.seal(index, false, &pending))
                        .map_err(io)?;
                    index = index.checked_add(1).ok_or(IngestError::TooLarge {
                        limit: u64::from(u32::MAX) * CHUNK as u64,
                    })?;
                    pending.clear();
                }
                let take = (CHUNK - pending.len()).min(rest.len());
                pending.extend_from_slice(&rest[..take]);
                plain_len += take as u64;
                rest = &rest[take..];
            }
        }
        out.write_all(&cipher.seal(index, true, &pending))
            .map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.error()))?;
        drop(file);
        let file = File::open(path).map_err(io)?;
        Ok(SharedSpool(Arc::new(Self {
            file,
            cipher,
            plain_len,
            _temp: temp,
        })))
    }

    fn last_index(&self) -> u64 {
        if self.plain_len == 0 {
            0
        } else {
            (self.plain_len - 1) / CHUNK as u64
        }
    }

    fn chunk(&self, index: u64) -> Result<Vec<u8>, ParquetError> {
        use std::os::unix::fs::FileExt;
        let (start, len) = sealed_span(index, self.plain_len);
        let mut sealed = vec![0u8; len];
        self.file
            .read_exact_at(&mut sealed, start)
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        let idx =
            u32::try_from(index).map_err(|_| ParquetError::General("spool too large".into()))?;
        self.cipher
            .open(idx, index == self.last_index(), &sealed)
            .map_err(|e| ParquetError::External(Box::new(e)))
    }

    fn read_range(&self, start: u64, length: usize) -> Result<Vec<u8>, ParquetError> {
        let end = start
            .checked_add(length as u64)
            .filter(|e| *e <= self.plain_len)
            .ok_or_else(|| ParquetError::EOF("read past the end of the file".into()))?;
        let mut out = Vec::with_capacity(length);
        let mut pos = start;
        while pos < end {
            let idx = pos / CHUNK as u64;
            let chunk = self.chunk(idx)?;
            let off = (pos - idx * CHUNK as u64) as usize;
            let take = ((end - pos) as usize).min(chunk.len() - off);
            out.extend_from_slice(&chunk[off..off + take]);
            pos += take as u64;
        }
        Ok(out)
    }
}

/// Sequential reads from a spool, decrypting a chunk at a time.
struct SpoolRead {
    spool: Arc<Spool>,
    pos: u64,
    buf: Vec<u8>,
    buf_pos: usize,
}

impl Read for SpoolRead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf_pos == self.buf.len() {
            if self.pos >= self.spool.plain_len {
                return Ok(0);
            }
            let idx = self.pos / CHUNK as u64;
            let chunk = self.spool.chunk(idx).map_err(std::io::Error::other)?;
            let off = (self.pos - idx * CHUNK as u64) as usize;
            self.buf = chunk[off..].to_vec();
            self.buf_pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        self.pos += n as u64;
        Ok(n)
    }
}

/// `ChunkReader` needs `Send + Sync + 'static` and hands out independent readers, so the
/// spool is shared behind an `Arc`.
struct SharedSpool(Arc<Spool>);

impl Length for SharedSpool {
    fn len(&self) -> u64 {
        self.0.plain_len
    }
}

impl ChunkReader for SharedSpool {
    type T = SpoolRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(SpoolRead {
            spool: self.0.clone(),
            pos: start,
            buf: Vec::new(),
            buf_pos: 0,
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.0.read_range(start, length).map(Bytes::from)
    }
}
