//! Just enough protobuf encoding to write ONNX messages (proto2 wire format;
//! repeated scalars unpacked, which every parser accepts).

#[derive(Default)]
pub struct Msg {
    pub buf: Vec<u8>,
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Msg {
    fn key(&mut self, field: u32, wire: u8) {
        varint(&mut self.buf, ((field as u64) << 3) | wire as u64);
    }
    pub fn int(&mut self, field: u32, v: i64) {
        self.key(field, 0);
        varint(&mut self.buf, v as u64);
    }
    pub fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, field: u32, v: &[u8]) {
        self.key(field, 2);
        varint(&mut self.buf, v.len() as u64);
        self.buf.extend_from_slice(v);
    }
    pub fn str(&mut self, field: u32, v: &str) {
        self.bytes(field, v.as_bytes());
    }
    pub fn msg(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_keys_follow_the_wire_format() {
        let mut m = Msg::default();
        m.int(1, 300);
        assert_eq!(m.buf, vec![0x08, 0xac, 0x02]);
        let mut m = Msg::default();
        m.int(2, -1);
        assert_eq!(m.buf.len(), 11, "negative int64 is a 10-byte varint");
        let mut m = Msg::default();
        m.str(3, "ab");
        assert_eq!(m.buf, vec![0x1a, 2, b'a', b'b']);
    }
}
