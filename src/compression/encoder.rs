//! Streaming encoders: each input chunk goes in as it arrives and whatever compressed output
//! is ready comes out, so memory stays flat whatever the body's size.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::settings::{Algorithm, Levels};

/// One response's encoder, writing into a buffer that is emptied after every chunk.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// Brotli's window: 4 MiB (lgwin 22), its usual default; the encoder's memory is bounded by it.
const BROTLI_WINDOW: u32 = 22;

impl Encoder {
    pub fn new(algorithm: Algorithm, levels: &Levels) -> io::Result<Self> {
        Ok(match algorithm {
            Algorithm::Gzip => Self::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(levels.gzip.min(9)),
            )),
            Algorithm::Brotli => Self::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                levels.br.min(11),
                BROTLI_WINDOW,
            ))),
            Algorithm::Zstd => Self::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                levels.zstd.clamp(1, 19),
            )?),
        })
    }

    /// Compresses `input`; returns the output ready so far (often empty: encoders collect
    /// a block before they emit it).
    pub fn write(&mut self, input: &[u8]) -> io::Result<Bytes> {
        match self {
            Self::Gzip(encoder) => encoder.write_all(input)?,
            Self::Brotli(encoder) => encoder.write_all(input)?,
            Self::Zstd(encoder) => encoder.write_all(input)?,
        }
        Ok(self.take())
    }

    /// Emits everything compressed so far, so a client waiting on a slow body gets what has
    /// arrived (a few bytes of framing each time).
    pub fn flush(&mut self) -> io::Result<Bytes> {
        match self {
            Self::Gzip(encoder) => encoder.flush()?,
            Self::Brotli(encoder) => encoder.flush()?,
            Self::Zstd(encoder) => encoder.flush()?,
        }
        Ok(self.take())
    }

    /// Ends the stream: the last block and the trailer.
    pub fn finish(self) -> io::Result<Bytes> {
        let out = match self {
            Self::Gzip(encoder) => encoder.finish()?,
            Self::Brotli(encoder) => encoder.into_inner(),
            Self::Zstd(encoder) => encoder.finish()?,
        };
        Ok(Bytes::from(out))
    }

    fn take(&mut self) -> Bytes {
        let buffer = match self {
            Self::Gzip(encoder) => encoder.get_mut(),
            Self::Brotli(encoder) => encoder.get_mut(),
            Self::Zstd(encoder) => encoder.get_mut(),
        };
        Bytes::from(std::mem::take(buffer))
    }
}

/// A body stream compressed as it flows. When the inner stream has nothing new for now, what
/// was compressed so far is flushed out, so slow bodies are not held back in the encoder.
pub struct Compress<S> {
    inner: S,
    encoder: Option<Encoder>,
    /// Input went in since the last output left.
    pending: bool,
}

impl<S> Compress<S> {
    pub fn new(inner: S, encoder: Encoder) -> Self {
        Self {
            inner,
            encoder: Some(encoder),
            pending: false,
        }
    }
}

/// Why a compressed body stopped: the body underneath failed, or the encoder did.
pub type CompressError = Box<dyn std::error::Error>;

impl<S, E> Stream for Compress<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<CompressError>,
{
    type Item = Result<Bytes, CompressError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = encoder.write(&chunk)?;
                    this.pending = true;
                    if !out.is_empty() {
                        this.pending = false;
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    this.encoder = None;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(None) => {
                    let encoder = this.encoder.take().expect("checked above");
                    let out = encoder.finish()?;
                    return Poll::Ready((!out.is_empty()).then_some(Ok(out)));
                }
                Poll::Pending if this.pending => {
                    this.pending = false;
                    let out = encoder.flush()?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Read;

    fn page() -> Vec<u8> {
        (0..2000)
            .flat_map(|i| format!("<li class=\"item\">row {i} of the list</li>\n").into_bytes())
            .collect()
    }

    fn decode(algorithm: Algorithm, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match algorithm {
            Algorithm::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algorithm::Brotli => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algorithm::Zstd => out = zstd::decode_all(data).unwrap(),
        }
        out
    }

    #[test]
    fn each_coding_round_trips_in_chunks() {
        let page = page();
        for algorithm in [Algorithm::Gzip, Algorithm::Brotli, Algorithm::Zstd] {
            let chunks: Vec<Result<Bytes, io::Error>> = page
                .chunks(1000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let encoder = Encoder::new(algorithm, &Levels::default()).unwrap();
            let stream = Compress::new(futures_util::stream::iter(chunks), encoder);
            let out: Vec<Bytes> = actix_rt::System::new()
                .block_on(stream.map(|chunk| chunk.unwrap()).collect::<Vec<_>>());
            let compressed: Vec<u8> = out.concat();
            assert!(compressed.len() < page.len() / 4, "{algorithm:?}");
            assert_eq!(decode(algorithm, &compressed), page, "{algorithm:?}");
        }
    }

    #[test]
    fn flushing_keeps_the_stream_decodable() {
        for algorithm in [Algorithm::Gzip, Algorithm::Brotli, Algorithm::Zstd] {
            let mut encoder = Encoder::new(algorithm, &Levels::default()).unwrap();
            let mut out = encoder.write(b"first part ").unwrap().to_vec();
            let flushed = encoder.flush().unwrap();
            assert!(
                !flushed.is_empty(),
                "{algorithm:?} emitted nothing on flush"
            );
            out.extend_from_slice(&flushed);
            out.extend_from_slice(&encoder.write(b"second part").unwrap());
            out.extend_from_slice(&encoder.finish().unwrap());
            assert_eq!(decode(algorithm, &out), b"first part second part");
        }
    }
}
