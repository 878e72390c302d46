//! The control plane's frames: a tag, the rank a message speaks for, a length, the bytes.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// A rank introduces itself to rank 0: its rank, the job's size, what it runs.
pub const HELLO: u8 = 1;
/// Rank 0 lets a rank in, with the job's shared bytes (e.g. NCCL's unique id).
pub const WELCOME: u8 = 2;
/// A collective's values.
pub const DATA: u8 = 3;
/// The rank named in the frame failed; the text says why.
pub const ABORT: u8 = 4;

/// No frame of the control plane comes near this (gradients of the paper's network on CPU
/// ranks are 244 MB).
const MAX_BODY: u64 = 4 << 30;

pub struct Frame {
    pub tag: u8,
    pub from: usize,
    pub body: Vec<u8>,
}

pub fn write(stream: &mut TcpStream, tag: u8, from: usize, body: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 13];
    header[0] = tag;
    header[1..5].copy_from_slice(&(from as u32).to_le_bytes());
    header[5..].copy_from_slice(&(body.len() as u64).to_le_bytes());
    stream.write_all(&header)?;
    stream.write_all(body)?;
    stream.flush()
}

pub fn read(stream: &mut TcpStream) -> io::Result<Frame> {
    let mut header = [0u8; 13];
    stream.read_exact(&mut header)?;
    let from = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
    let len = u64::from_le_bytes(header[5..].try_into().expect("8 bytes"));
    if len > MAX_BODY || !(HELLO..=ABORT).contains(&header[0]) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a frame that is not the control plane's (is another program on this port?)",
        ));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body)?;
    Ok(Frame {
        tag: header[0],
        from,
        body,
    })
}

/// Numbers that cross the wire little-endian.
pub trait Word: Copy + Default {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! word {
    ($t:ty) => {
        impl Word for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("one word"))
            }
        }
    };
}

word!(f32);
word!(f64);
word!(u64);

pub fn encode<T: Word>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * T::SIZE);
    values.iter().for_each(|v| v.put(&mut out));
    out
}

/// `None` when `bytes` do not hold exactly `len` words.
pub fn decode<T: Word>(bytes: &[u8], len: usize) -> Option<Vec<T>> {
    (bytes.len() == len * T::SIZE).then(|| bytes.chunks_exact(T::SIZE).map(T::get).collect())
}
