//! Primitive encodings shared by every frame body.
//!
//! All integers are big-endian. The compound encodings are:
//!
//! ```text
//! string   u16 length, then that many bytes of UTF-8
//! bytes    u32 length, then that many bytes
//! list<T>  u32 count, then count × T
//! option<T> u8 tag (0 = absent, 1 = present), then T when present
//! bool     u8, 0 or 1
//! varint   unsigned LEB128, at most 10 bytes (used inside record batches only)
//! ```
//!
//! Decoding reads from a [`Reader`] over the frame body (a [`Bytes`]), so `bytes` fields are
//! slices of the receive buffer, never copies. Running out of body bytes is
//! [`DecodeError::Truncated`]: the frame is complete (its length was known), so a short body
//! means the frame is malformed, not that more bytes are coming.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;

/// A value with a wire encoding inside a frame body.
pub trait Wire: Sized {
    /// Appends the encoding of `self` to `dst`.
    fn put(&self, dst: &mut BytesMut);
    /// Reads one value from `src`.
    fn get(src: &mut Reader) -> Result<Self, DecodeError>;
}

/// A cursor over a frame body.
#[derive(Debug, Clone)]
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    /// Starts reading `buf` from its first byte.
    pub fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Takes the next `n` bytes without copying.
    pub fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// Fails unless every byte of the body was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }

    /// Reads an unsigned LEB128 varint of at most 10 bytes.
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            self.need(1)?;
            let byte = self.buf.get_u8();
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(DecodeError::BadVarint);
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint)
    }

    /// Reads a varint that must fit a `usize` length within the remaining body.
    pub fn varint_len(&mut self) -> Result<usize, DecodeError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        self.need(len)?;
        Ok(len)
    }
}

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_varint(dst: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        dst.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

/// The number of bytes [`put_varint`] writes for `value`.
pub fn varint_size(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Maps a signed value to an unsigned one so small magnitudes stay small (zigzag).
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

macro_rules! wire_int {
    ($($ty:ty => $put:ident, $get:ident;)*) => {$(
        impl Wire for $ty {
            fn put(&self, dst: &mut BytesMut) {
                dst.$put(*self);
            }
            fn get(src: &mut Reader) -> Result<Self, DecodeError> {
                src.need(std::mem::size_of::<$ty>())?;
                Ok(src.buf.$get())
            }
        }
    )*};
}

wire_int! {
    u8 => put_u8, get_u8;
    u16 => put_u16, get_u16;
    u32 => put_u32, get_u32;
    u64 => put_u64, get_u64;
}

impl Wire for bool {
    fn put(&self, dst: &mut BytesMut) {
        dst.put_u8(u8::from(*self));
    }
    fn get(src: &mut Reader) -> Result<Self, DecodeError> {
        match u8::get(src)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::BadEnum {
                what: "bool",
                value: other.into(),
            }),
        }
    }
}

impl Wire for String {
    /// Strings longer than `u16::MAX` bytes are cut at a character boundary; every string
    /// the protocol carries (names, messages) is far shorter.
    fn put(&self, dst: &mut BytesMut) {
        let mut end = self.len().min(usize::from(u16::MAX));
        while !self.is_char_boundary(end) {
            end -= 1;
        }
        dst.put_u16(end as u16);
        dst.put_slice(&self.as_bytes()[..end]);
    }
    fn get(src: &mut Reader) -> Result<Self, DecodeError> {
        let len = usize::from(u16::get(src)?);
        let raw = src.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::BadUtf8)
    }
}

impl Wire for Bytes {
    fn put(&self, dst: &mut BytesMut) {
        dst.put_u32(self.len() as u32);
        dst.put_slice(self);
    }
    fn get(src: &mut Reader) -> Result<Self, DecodeError> {
        let len = u32::get(src)? as usize;
        src.take(len)
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn put(&self, dst: &mut BytesMut) {
        dst.put_u32(self.len() as u32);
        for item in self {
            item.put(dst);
        }
    }
    fn get(src: &mut Reader) -> Result<Self, DecodeError> {
        let count = u32::get(src)? as usize;
        // A hostile count costs nothing: capacity never exceeds the bytes actually present.
        let mut items = Vec::with_capacity(count.min(src.remaining()));
        for _ in 0..count {
            items.push(T::get(src)?);
        }
        Ok(items)
    }
}

impl<T: Wire> Wire for Option<T> {
    fn put(&self, dst: &mut BytesMut) {
        match self {
            None => dst.put_u8(0),
            Some(value) => {
                dst.put_u8(1);
                value.put(dst);
            }
        }
    }
    fn get(src: &mut Reader) -> Result<Self, DecodeError> {
        match u8::get(src)? {
            0 => Ok(None),
            1 => Ok(Some(T::get(src)?)),
            other => Err(DecodeError::BadEnum {
                what: "option tag",
                value: other.into(),
            }),
        }
    }
}

/// Declares a struct whose wire encoding is its fields in order.
macro_rules! wire_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name { $($(#[$fmeta])* pub $field: $ty,)* }

        impl $crate::wire::Wire for $name {
            #[allow(unused_variables)]
            fn put(&self, dst: &mut ::bytes::BytesMut) {
                $($crate::wire::Wire::put(&self.$field, dst);)*
            }
            #[allow(unused_variables)]
            fn get(src: &mut $crate::wire::Reader) -> Result<Self, $crate::error::DecodeError> {
                Ok($name { $($field: $crate::wire::Wire::get(src)?,)* })
            }
        }
    };
}

/// Declares a fieldless enum carried as one `u8`; an unknown value is a decode error.
macro_rules! wire_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[repr(u8)]
        pub enum $name { #[default] $($(#[$vmeta])* $variant = $value,)* }

        impl $crate::wire::Wire for $name {
            fn put(&self, dst: &mut ::bytes::BytesMut) {
                ::bytes::BufMut::put_u8(dst, *self as u8);
            }
            fn get(src: &mut $crate::wire::Reader) -> Result<Self, $crate::error::DecodeError> {
                match <u8 as $crate::wire::Wire>::get(src)? {
                    $($value => Ok($name::$variant),)*
                    other => Err($crate::error::DecodeError::BadEnum {
                        what: stringify!($name),
                        value: other.into(),
                    }),
                }
            }
        }
    };
}

pub(crate) use {wire_enum, wire_struct};

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(value: T) {
        let mut buf = BytesMut::new();
        value.put(&mut buf);
        let mut reader = Reader::new(buf.freeze());
        assert_eq!(T::get(&mut reader).unwrap(), value);
        reader.finish().unwrap();
    }

    #[test]
    fn primitives_round_trip() {
        round_trip(7u8);
        round_trip(0xbeefu16);
        round_trip(u32::MAX);
        round_trip(u64::MAX - 3);
        round_trip(true);
        round_trip(String::from("héllo"));
        round_trip(Bytes::from_static(b"\x00\x01payload"));
        round_trip(vec![1u32, 2, 3]);
        round_trip(Some(String::from("x")));
        round_trip(None::<u64>);
    }

    #[test]
    fn varints_round_trip_and_report_their_size() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_size(value), "size of {value}");
            let mut reader = Reader::new(buf.freeze());
            assert_eq!(reader.varint().unwrap(), value);
        }
        for value in [0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let mut reader = Reader::new(Bytes::from_static(&[0xff; 11]));
        assert_eq!(reader.varint(), Err(DecodeError::BadVarint));
    }

    #[test]
    fn hostile_list_count_does_not_allocate_or_panic() {
        let mut reader = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0, 0]));
        assert_eq!(Vec::<u64>::get(&mut reader), Err(DecodeError::Truncated));
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut reader = Reader::new(Bytes::from_static(&[0, 2, 0xff, 0xfe]));
        assert_eq!(String::get(&mut reader), Err(DecodeError::BadUtf8));
    }
}
