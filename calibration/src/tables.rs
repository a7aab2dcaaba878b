//! Calibration tables other tools read:
//! - TensorRT's native calibration cache (text): a `TRT-<version>-<calibrator>`
//!   header, then `tensor: <hex of the float32 bit pattern of the scale>` per
//!   tensor, the scale being threshold / 127;
//! - ONNX Runtime TensorRT provider's table (`trt_int8_calibration_table_name`):
//!   the flatbuffer `TrtTable { dict: [KeyValue { key, value }] }` that
//!   onnxruntime's `write_calibration_table` writes, the value being the
//!   dynamic range (threshold) as a decimal string, keys sorted.

use std::collections::BTreeMap;

use crate::observe::{Method, Range};

/// TensorRT version stamped in cache headers (8.6.1).
pub const TRT_VERSION: u32 = 8601;

/// TensorRT's text cache for one graph.
pub fn trt_cache(ranges: &BTreeMap<String, Range>, method: Method) -> String {
    let calibrator = match method {
        Method::MinMax => "MinMaxCalibration",
        _ => "EntropyCalibration2",
    };
    let mut s = format!("TRT-{TRT_VERSION}-{calibrator}\n");
    for (name, r) in ranges {
        s.push_str(&format!("{name}: {:08x}\n", r.scale().to_bits()));
    }
    s
}

/// The dynamic range as ONNX Runtime writes it: `str(max(abs(lo), abs(hi)))`.
pub fn range_string(r: &Range) -> String {
    format!("{}", r.threshold)
}

/// ONNX Runtime's TensorRT calibration table (flatbuffer) for one graph.
pub fn ort_trt_table(ranges: &BTreeMap<String, Range>) -> Vec<u8> {
    // Laid out front to back; every uoffset points forward, as flatbuffers require.
    let mut b: Vec<u8> = Vec::new();
    let put32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let align4 = |b: &mut Vec<u8>| {
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
    };
    b.extend(0u32.to_le_bytes()); // root offset, patched below
                                  // TrtTable vtable: [vtable size 6, table size 8, field 0 at 4]
    let root_vt = b.len();
    for v in [6u16, 8, 4] {
        b.extend(v.to_le_bytes());
    }
    align4(&mut b);
    let root = b.len();
    b.extend(((root - root_vt) as i32).to_le_bytes());
    let vec_ref = b.len();
    b.extend(0u32.to_le_bytes());
    put32(&mut b, 0, root as u32);
    // the vector of KeyValue offsets
    let vec_at = b.len();
    put32(&mut b, vec_ref, (vec_at - vec_ref) as u32);
    b.extend((ranges.len() as u32).to_le_bytes());
    let slots: Vec<usize> = (0..ranges.len())
        .map(|_| {
            let at = b.len();
            b.extend(0u32.to_le_bytes());
            at
        })
        .collect();
    // KeyValue tables: vtable [8, 12, 4, 8], then [soffset, key, value]
    let mut string_refs = Vec::new();
    for ((name, r), slot) in ranges.iter().zip(&slots) {
        let vt = b.len();
        for v in [8u16, 12, 4, 8] {
            b.extend(v.to_le_bytes());
        }
        let table = b.len();
        put32(&mut b, *slot, (table - slot) as u32);
        b.extend(((table - vt) as i32).to_le_bytes());
        let key_ref = b.len();
        b.extend(0u32.to_le_bytes());
        let val_ref = b.len();
        b.extend(0u32.to_le_bytes());
        string_refs.push((key_ref, name.clone()));
        string_refs.push((val_ref, range_string(r)));
    }
    for (at, s) in string_refs {
        align4(&mut b);
        let pos = b.len();
        put32(&mut b, at, (pos - at) as u32);
        b.extend((s.len() as u32).to_le_bytes());
        b.extend(s.as_bytes());
        b.push(0);
    }
    align4(&mut b);
    b
}

/// Reads a `TrtTable` flatbuffer back (tests, and a check on what we write).
pub fn read_ort_trt_table(b: &[u8]) -> Option<Vec<(String, String)>> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
    };
    let field = |table: usize, i: usize| -> Option<usize> {
        let vt = (table as i64 - u32_at(table)? as i32 as i64) as usize;
        let off = u16_at(vt + 4 + 2 * i)? as usize;
        (off != 0).then_some(table + off)
    };
    let deref = |at: usize| -> Option<usize> { Some(at + u32_at(at)? as usize) };
    let string = |at: usize| -> Option<String> {
        let s = deref(at)?;
        let n = u32_at(s)? as usize;
        Some(String::from_utf8_lossy(b.get(s + 4..s + 4 + n)?).into_owned())
    };
    let root = deref(0)?;
    let v = deref(field(root, 0)?)?;
    let n = u32_at(v)? as usize;
    let mut out = Vec::new();
    for i in 0..n {
        let kv = deref(v + 4 + 4 * i)?;
        out.push((string(field(kv, 0)?)?, string(field(kv, 1)?)?));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> BTreeMap<String, Range> {
        let mut m = BTreeMap::new();
        m.insert(
            "a.x".into(),
            Range {
                min: -1.0,
                max: 2.54,
                threshold: 2.54,
                count: 3,
            },
        );
        m.insert(
            "b".into(),
            Range {
                min: -0.5,
                max: 0.25,
                threshold: 0.5,
                count: 3,
            },
        );
        m
    }

    #[test]
    fn the_trt_cache_has_a_header_and_one_hex_scale_per_tensor() {
        let c = trt_cache(&ranges(), Method::Entropy);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines[0], "TRT-8601-EntropyCalibration2");
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1],
            format!("a.x: {:08x}", (2.54f32 / 127.0).to_bits())
        );
        // 0.5 / 127 = 1.00787 * 2^-8: exponent 119 (0x77), mantissa 0x010204
        assert_eq!(lines[2], "b: 3b810204");
    }

    #[test]
    fn the_ort_table_is_a_readable_flatbuffer_with_sorted_keys() {
        let t = ort_trt_table(&ranges());
        assert_eq!(t.len() % 4, 0);
        let kv = read_ort_trt_table(&t).unwrap();
        assert_eq!(
            kv,
            vec![
                ("a.x".to_string(), "2.54".to_string()),
                ("b".to_string(), "0.5".to_string())
            ]
        );
    }
}
