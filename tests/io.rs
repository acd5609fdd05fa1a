//! Trajectory files: `.npy` and extended XYZ round trips, every malformed, truncated and
//! mis-shaped case, and the external validation sets.

use std::path::{Path, PathBuf};

use eqflow::Error;
use eqflow::geometry::Layout;
use eqflow::io::npy::{self, ConfigShape, NpyArray};
use eqflow::io::xyz;
use eqflow::io::{self as eio, Dtype};
use eqflow::species::Species;

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("io-tests")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn layout(n: usize, d: usize) -> Layout {
    Layout::new(n, d).unwrap()
}

/// Configurations with values that do not survive a careless conversion (non-dyadic fractions,
/// negative zero, large and small magnitudes).
fn configurations(n: usize, len: usize) -> Vec<f64> {
    (0..n * len)
        .map(|i| match i % 5 {
            0 => (i as f64 * 0.1).sin() * 3.0,
            1 => -1.0 / (i as f64 + 3.0),
            2 => 1e-30 * i as f64,
            3 => -0.0,
            _ => 12345.678 + i as f64,
        })
        .collect()
}

/// A `.npy` file assembled by hand: header dict padded as numpy pads it, then `data`.
fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut text = dict.to_string();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read_bytes(bytes: &[u8]) -> eqflow::Result<NpyArray> {
    npy::read_array_from(bytes)
}

fn format_error_containing(r: eqflow::Result<NpyArray>, needle: &str) {
    match r {
        Err(Error::Format { what }) => {
            assert!(what.contains(needle), "message {what:?} lacks {needle:?}")
        }
        other => panic!("expected a format error containing {needle:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// .npy round trips

#[test]
fn npy_configurations_round_trip_in_both_precisions_and_shapes() {
    let dir = scratch("npy_round_trip");
    let l = layout(4, 2);
    let x = configurations(5, l.len());
    for dtype in [Dtype::F32, Dtype::F64] {
        for shape in [ConfigShape::Flat, ConfigShape::Particles] {
            let path = dir.join(format!("{dtype:?}-{shape:?}.npy"));
            eio::write_configurations(&path, &x, l, dtype, shape).unwrap();
            let array = eio::read_array(&path).unwrap();
            let expected_shape = match shape {
                ConfigShape::Flat => vec![5, 8],
                ConfigShape::Particles => vec![5, 4, 2],
            };
            assert_eq!(array.shape, expected_shape);
            assert_eq!(array.dtype, dtype);
            // Bytes on disk: header (a multiple of 64) plus exactly the data.
            let size = std::fs::metadata(&path).unwrap().len() as usize;
            assert_eq!((size - 40 * dtype.size()) % 64, 0, "{size}");

            let back = eio::read_configurations(&path, l).unwrap();
            let expected: Vec<f64> = match dtype {
                Dtype::F64 => x.clone(),
                Dtype::F32 => x.iter().map(|&v| f64::from(v as f32)).collect(),
            };
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back), bits(&expected), "{dtype:?} {shape:?}");
        }
    }
}

#[test]
fn npy_values_round_trip_with_infinities() {
    let dir = scratch("npy_values");
    let values = vec![-22.46, f64::INFINITY, f64::NEG_INFINITY, 0.1, -0.0, 1e-300];
    for dtype in [Dtype::F32, Dtype::F64] {
        let path = dir.join(format!("{dtype:?}.npy"));
        eio::write_values(&path, &values, dtype).unwrap();
        let back = eio::read_values(&path).unwrap();
        let expected: Vec<f64> = match dtype {
            Dtype::F64 => values.clone(),
            Dtype::F32 => values.iter().map(|&v| f64::from(v as f32)).collect(),
        };
        assert_eq!(back.len(), 6);
        for (a, b) in back.iter().zip(&expected) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }
    // An empty array is valid.
    let path = dir.join("empty.npy");
    eio::write_values(&path, &[], Dtype::F64).unwrap();
    assert_eq!(eio::read_values(&path).unwrap(), Vec::<f64>::new());
}

#[test]
fn npy_header_is_byte_identical_to_numpy() {
    // numpy.save(np.zeros((10000, 8), np.float32)) starts with exactly these 128 bytes (the
    // header of the DW-4 validation set, written by numpy, is the same).
    let mut expected = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
    expected.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (10000, 8), }");
    expected.resize(127, b' ');
    expected.push(b'\n');
    let mut written = Vec::new();
    npy::write_array_to(&mut written, &[10_000, 8], &vec![0.0; 80_000], Dtype::F32).unwrap();
    assert_eq!(written[..128], expected[..]);
    assert_eq!(written.len(), 128 + 320_000);
    if let Some(dir) = shared_data() {
        let on_disk = std::fs::read(dir.join("dw4_val_10000.npy")).unwrap();
        assert_eq!(on_disk[..128], expected[..]);
    }
    // A 1-D shape is written as Python writes a one-element tuple.
    let mut one_d = Vec::new();
    npy::write_array_to(&mut one_d, &[3], &[1.0, 2.0, 3.0], Dtype::F64).unwrap();
    let text = String::from_utf8_lossy(&one_d[10..]);
    assert!(text.starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }"));
}

#[test]
fn npy_reader_accepts_what_other_writers_produce() {
    // Key order, double quotes, Python 2 longs, no trailing comma, version 2.0: all valid.
    let data = f64_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let variants = [
        "{'shape': (2, 2), 'fortran_order': False, 'descr': '<f8'}",
        "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (2L, 2L)}",
    ];
    for dict in variants {
        let a = read_bytes(&npy_bytes(dict, &data)).unwrap();
        assert_eq!(
            (a.shape.clone(), a.data.clone()),
            (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
        );
    }
    let mut v2 = npy_bytes(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }",
        &data,
    );
    // Version 2.0: the same header with a four-byte length.
    let len = u16::from_le_bytes([v2[8], v2[9]]) as u32;
    v2.splice(6..10, [2u8, 0].into_iter().chain(len.to_le_bytes()));
    assert_eq!(read_bytes(&v2).unwrap().data, vec![1.0, 2.0, 3.0, 4.0]);
    // Fortran order is harmless for one dimension.
    let f = npy_bytes(
        "{'descr': '<f8', 'fortran_order': True, 'shape': (4,), }",
        &data,
    );
    assert_eq!(read_bytes(&f).unwrap().shape, vec![4]);
}

// ---------------------------------------------------------------------------------------------
// .npy failures

#[test]
fn npy_missing_file_is_an_io_error_naming_the_file() {
    let path = scratch("npy_missing").join("nope.npy");
    match eio::read_configurations(&path, layout(4, 2)) {
        Err(Error::Io { what }) => assert!(what.contains("nope.npy"), "{what}"),
        other => panic!("{other:?}"),
    }
    match eio::write_values(
        scratch("npy_missing").join("no/such/dir.npy"),
        &[1.0],
        Dtype::F64,
    ) {
        Err(Error::Io { what }) => assert!(what.contains("dir.npy"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn npy_malformed_headers_are_format_errors() {
    let data = f64_bytes(&[1.0, 2.0]);
    let good = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
    assert!(read_bytes(&npy_bytes(good, &data)).is_ok());

    format_error_containing(read_bytes(b""), "not a .npy file");
    format_error_containing(read_bytes(b"\x93NUMPY"), "not a .npy file");
    format_error_containing(read_bytes(b"PK\x03\x04 this is a zip"), "not a .npy file");
    let mut bad_version = npy_bytes(good, &data);
    bad_version[6] = 4;
    format_error_containing(read_bytes(&bad_version), "version 4.0");
    format_error_containing(read_bytes(b"\x93NUMPY\x01\x00\x76"), "truncated header");
    let full = npy_bytes(good, &data);
    format_error_containing(read_bytes(&full[..40]), "truncated header");
    let mut huge_header = b"\x93NUMPY\x02\x00".to_vec();
    huge_header.extend_from_slice(&u32::MAX.to_le_bytes());
    format_error_containing(read_bytes(&huge_header), "implausibly large");
    let mut not_text = npy_bytes(good, &data);
    not_text[12] = 0xff;
    format_error_containing(read_bytes(&not_text), "UTF-8");

    let cases = [
        (
            "{'descr': '<f8', 'shape': (2,), }",
            "'fortran_order' is missing",
        ),
        (
            "{'fortran_order': False, 'shape': (2,), }",
            "'descr' is missing",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, }",
            "'shape' is missing",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'x': 'y'}",
            "unexpected key 'x'",
        ),
        (
            "{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (2,)}",
            "twice",
        ),
        (
            "{'descr': '<f8', 'fortran_order': 'no', 'shape': (2,), }",
            "wrong kind",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': [2], }",
            "expected a string",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2), }",
            "trailing comma",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (-2,), }",
            "negative",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,) ",
            "expected ',' or '}'",
        ),
        ("['descr', '<f8']", "expected '{'"),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), } extra",
            "after the closing",
        ),
        (
            "{'descr': '<f8', 'fortran_order': Fals, 'shape': (2,), }",
            "unknown name",
        ),
        (
            "{'descr: '<f8', 'fortran_order': False, 'shape': (2,), }",
            "expected ':'",
        ),
    ];
    for (dict, needle) in cases {
        format_error_containing(read_bytes(&npy_bytes(dict, &data)), needle);
    }
}

#[test]
fn npy_wrong_dtypes_and_order_are_format_errors() {
    let data = [0u8; 16];
    for (descr, needle) in [
        ("<i4", "unsupported dtype '<i4'"),
        ("<f2", "unsupported dtype '<f2'"),
        ("<c16", "unsupported dtype '<c16'"),
        ("|O", "unsupported dtype '|O'"),
        (">f8", "big-endian"),
        (">f4", "big-endian"),
    ] {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}");
        format_error_containing(read_bytes(&npy_bytes(&dict, &data)), needle);
    }
    let fortran = npy_bytes(
        "{'descr': '<f8', 'fortran_order': True, 'shape': (1, 2), }",
        &data,
    );
    format_error_containing(read_bytes(&fortran), "Fortran order");
}

#[test]
fn npy_truncated_and_oversized_data_are_format_errors() {
    let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 4), }";
    let data = f64_bytes(&[0.5; 8]);
    assert!(read_bytes(&npy_bytes(dict, &data)).is_ok());
    format_error_containing(read_bytes(&npy_bytes(dict, &data[..63])), "needs 64 bytes");
    format_error_containing(read_bytes(&npy_bytes(dict, &[])), "the file has 0");
    let mut longer = data.clone();
    longer.extend_from_slice(&[0u8; 8]);
    format_error_containing(read_bytes(&npy_bytes(dict, &longer)), "8 unexpected bytes");
    // A shape whose element count overflows: an error, not a panic or a giant allocation.
    for shape in ["(4294967296, 4294967296, 2)", "(18446744073709551615, 2)"] {
        let dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
        format_error_containing(read_bytes(&npy_bytes(&dict, &data)), "fit in memory");
    }
    // A shape that fits but promises far more than the file holds.
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 39), }";
    format_error_containing(read_bytes(&npy_bytes(dict, &data)), "truncated data");
    // Truncation on disk, through the path-taking reader: the message names the file.
    let path = scratch("npy_truncated").join("cut.npy");
    std::fs::write(&path, npy_bytes(dict, &data)).unwrap();
    match eio::read_array(&path) {
        Err(Error::Format { what }) => assert!(what.contains("cut.npy"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn npy_wrong_shapes_are_dimension_mismatches() {
    let dir = scratch("npy_shapes");
    let write = |name: &str, shape: &[usize]| {
        let n: usize = shape.iter().product();
        let path = dir.join(name);
        eio::write_array(&path, shape, &vec![1.0; n], Dtype::F64).unwrap();
        path
    };
    let dw4 = layout(4, 2);
    // Right shapes.
    assert_eq!(
        eio::read_configurations(write("flat.npy", &[3, 8]), dw4)
            .unwrap()
            .len(),
        24
    );
    assert_eq!(
        eio::read_configurations(write("3d.npy", &[3, 4, 2]), dw4)
            .unwrap()
            .len(),
        24
    );
    assert_eq!(
        eio::read_configurations(write("none.npy", &[0, 8]), dw4)
            .unwrap()
            .len(),
        0
    );
    // Wrong ones.
    let mismatch =
        |path: PathBuf, expected: usize, found: usize| match eio::read_configurations(&path, dw4) {
            Err(Error::DimensionMismatch {
                expected: e,
                found: f,
                what,
            }) => {
                assert_eq!((e, f), (expected, found), "{what}");
                assert!(what.contains(&path.file_name().unwrap().to_string_lossy().to_string()));
            }
            other => panic!("{path:?}: {other:?}"),
        };
    mismatch(write("m9.npy", &[3, 9]), 8, 9);
    mismatch(write("lj.npy", &[3, 39]), 8, 39);
    mismatch(write("n3.npy", &[3, 3, 2]), 4, 3);
    mismatch(write("d3.npy", &[3, 4, 3]), 2, 3);
    mismatch(write("1d.npy", &[8]), 2, 1);
    mismatch(write("4d.npy", &[1, 1, 4, 2]), 2, 4);
    // Values must be one-dimensional.
    assert!(matches!(
        eio::read_values(write("2d.npy", &[2, 1])),
        Err(Error::DimensionMismatch {
            expected: 1,
            found: 2,
            ..
        })
    ));
}

#[test]
fn npy_non_finite_values_are_rejected() {
    let dir = scratch("npy_non_finite");
    let l = layout(2, 2);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let path = dir.join("bad.npy");
        // Written through the untyped writer (infinities allowed there), read as configurations.
        if !bad.is_nan() {
            eio::write_array(
                &path,
                &[2, 4],
                &[0.0, 1.0, 2.0, 3.0, 4.0, bad, 6.0, 7.0],
                Dtype::F64,
            )
            .unwrap();
            match eio::read_configurations(&path, l) {
                Err(Error::NonFinite { what }) => {
                    assert!(
                        what.contains("coordinate 1 of particle 0 of sample 1"),
                        "{what}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        // The typed writers refuse them up front, and create no file.
        let refused = dir.join("refused.npy");
        assert!(matches!(
            eio::write_configurations(
                &refused,
                &[0.0, bad, 1.0, 1.0],
                l,
                Dtype::F64,
                ConfigShape::Flat
            ),
            Err(Error::NonFinite { .. })
        ));
        assert!(!refused.exists());
    }
    // NaN in per-sample values, written by hand since no writer here produces it.
    let nan = npy_bytes(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
        &f64_bytes(&[1.0, f64::NAN]),
    );
    let path = dir.join("nan.npy");
    std::fs::write(&path, nan).unwrap();
    assert!(matches!(
        eio::read_values(&path),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        eio::write_values(dir.join("w.npy"), &[f64::NAN], Dtype::F32),
        Err(Error::NonFinite { .. })
    ));
    // A finite value that float32 cannot hold would silently become infinite.
    assert!(matches!(
        eio::write_values(dir.join("big.npy"), &[1e300], Dtype::F32),
        Err(Error::NonFinite { .. })
    ));
    assert!(eio::write_values(dir.join("big.npy"), &[1e300], Dtype::F64).is_ok());
}

#[test]
fn npy_writers_check_sizes() {
    let dir = scratch("npy_sizes");
    assert!(matches!(
        eio::write_configurations(
            dir.join("a.npy"),
            &[0.0; 7],
            layout(4, 2),
            Dtype::F64,
            ConfigShape::Flat
        ),
        Err(Error::DimensionMismatch {
            expected: 0,
            found: 7,
            ..
        })
    ));
    assert!(matches!(
        eio::write_array(dir.join("b.npy"), &[2, 3], &[0.0; 5], Dtype::F64),
        Err(Error::DimensionMismatch {
            expected: 6,
            found: 5,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// The external validation sets

fn shared_data() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: ../shared/data not found");
        None
    }
}

#[test]
fn validation_sets_are_read_with_their_shapes() {
    let Some(dir) = shared_data() else { return };
    for (file, n, d) in [("dw4_val_10000.npy", 4, 2), ("lj13_val_10000.npy", 13, 3)] {
        let path = dir.join(file);
        let array = eio::read_array(&path).unwrap();
        assert_eq!(array.shape, vec![10_000, n * d], "{file}");
        assert_eq!(array.dtype, Dtype::F32);
        let x = eio::read_configurations(&path, layout(n, d)).unwrap();
        assert_eq!(x.len(), 10_000 * n * d);
        // Real coordinates, not zeros: a spread of a few length units.
        let max = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(max > 1.0 && max < 50.0, "{file}: max |x| = {max}");
    }
    // The wrong system is refused.
    assert!(matches!(
        eio::read_configurations(dir.join("lj13_val_10000.npy"), layout(4, 2)),
        Err(Error::DimensionMismatch {
            expected: 8,
            found: 39,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// XYZ

#[test]
fn xyz_round_trip_is_exact_in_3d_with_properties() {
    let dir = scratch("xyz_3d");
    let l = layout(13, 3);
    let x = configurations(3, l.len());
    let energy = [-43.1, f64::INFINITY, 0.1];
    let log_q = [12.5, -3.0e-8, 7.0];
    let path = dir.join("lj.xyz");
    eio::write_xyz(&path, &x, l, &[("energy", &energy), ("log_q", &log_q)]).unwrap();
    let t = eio::read_xyz(&path, 3).unwrap();
    assert_eq!(t.layout, l);
    assert_eq!(t.n_frames(), 3);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&t.x), bits(&x));
    assert_eq!(t.properties.len(), 2);
    assert_eq!(t.properties[0].0, "energy");
    assert_eq!(bits(t.property("energy").unwrap()), bits(&energy));
    assert_eq!(bits(t.property("log_q").unwrap()), bits(&log_q));
    assert_eq!(t.property("log_w"), None);

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3 * 15);
    assert_eq!(lines[0], "13");
    assert_eq!(
        lines[1],
        "Properties=species:S:1:pos:R:3 energy=-43.1 log_q=12.5"
    );
    assert!(lines[2].starts_with("X "));
    assert!(lines[16].contains("energy=inf"));
}

#[test]
fn xyz_2d_is_written_in_the_z_0_plane_and_read_back() {
    let dir = scratch("xyz_2d");
    let l = layout(4, 2);
    let x = configurations(2, l.len());
    let path = dir.join("dw4.xyz");
    eio::write_xyz(&path, &x, l, &[]).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    for line in text.lines().filter(|l| l.starts_with("X ")) {
        assert!(line.ends_with(" 0.0"), "{line}");
    }
    assert_eq!(text.lines().nth(1), Some("Properties=species:S:1:pos:R:3"));
    let t = eio::read_xyz(&path, 2).unwrap();
    assert_eq!(t.x, x);
    assert!(t.properties.is_empty());
    // Read as 3-D it is the same points with z = 0.
    let t3 = eio::read_xyz(&path, 3).unwrap();
    assert_eq!(t3.layout, layout(4, 3));
    assert!(t3.x.chunks_exact(3).all(|p| p[2] == 0.0));
    // A genuinely 3-D file is not silently flattened.
    let lj = dir.join("3d.xyz");
    eio::write_xyz(&lj, &configurations(1, 6), layout(2, 3), &[]).unwrap();
    match eio::read_xyz(&lj, 2) {
        Err(Error::Format { what }) => assert!(what.contains("read as 2-D"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn xyz_reader_accepts_plain_and_richer_extended_files() {
    // Plain XYZ with a free-text comment, CRLF line ends, extra blank lines at the end.
    let plain = "2\r\nframe 0 of some trajectory t=3\r\nAr 0 0 0\r\nAr 1.5 0 0\r\n\r\n\n";
    let t = xyz::read_xyz_from(plain.as_bytes(), 3).unwrap();
    assert_eq!(t.x, vec![0.0, 0.0, 0.0, 1.5, 0.0, 0.0]);
    assert!(t.properties.is_empty());
    // ASE style: Lattice and pbc strings, a flag, extra per-atom columns after pos.
    let ase = "2\nLattice=\"10 0 0 0 10 0 0 0 10\" Properties=species:S:1:pos:R:3:forces:R:3 \
               energy=-1.5 pbc=\"F F F\" flag\nH 1 2 3 0.1 0.2 0.3\nH 4 5 6 0.4 0.5 0.6\n";
    let t = xyz::read_xyz_from(ase.as_bytes(), 3).unwrap();
    assert_eq!(t.x, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(t.properties, vec![("energy".to_string(), vec![-1.5])]);
    // pos need not come second.
    let moved = "2\nProperties=id:I:1:species:S:1:pos:R:3\n0 H 1 2 3\n1 H 4 5 6\n";
    assert_eq!(xyz::read_xyz_from(moved.as_bytes(), 3).unwrap().x[3], 4.0);
}

#[test]
fn xyz_keeps_the_species_of_a_several_species_system() {
    let dir = scratch("xyz_species");
    let l = layout(5, 3);
    let x = configurations(3, l.len());
    let species = Species::new(3, vec![0, 2, 1, 0, 2]).unwrap();
    let log_q = [1.0, 2.0, 3.0];
    let path = dir.join("binary.xyz");
    eio::write_xyz_with_species(&path, &x, l, Some(&species), &[("log_q", &log_q)]).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1],
        "Properties=species:S:1:pos:R:3:species_index:I:1 log_q=1.0"
    );
    // The index is the last column; the species symbol stays ASE's dummy atom.
    assert!(
        lines[3].starts_with("X ") && lines[3].ends_with(" 2"),
        "{}",
        lines[3]
    );
    let t = eio::read_xyz(&path, 3).unwrap();
    assert_eq!(t.species.as_deref(), Some(species.of_particle()));
    assert_eq!(t.x, x);
    assert_eq!(t.property("log_q"), Some(&log_q[..]));

    // Identical particles (no species, or one) write no column: what write_xyz writes.
    let plain = dir.join("plain.xyz");
    eio::write_xyz(&plain, &x, l, &[]).unwrap();
    let single = dir.join("single.xyz");
    eio::write_xyz_with_species(&single, &x, l, Some(&Species::single(5)), &[]).unwrap();
    assert_eq!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(&single).unwrap()
    );
    assert_eq!(eio::read_xyz(&plain, 3).unwrap().species, None);

    // A species list for another particle count is refused, and nothing is written.
    let wrong = dir.join("wrong.xyz");
    let three = Species::new(2, vec![0, 1, 1]).unwrap();
    assert!(matches!(
        eio::write_xyz_with_species(&wrong, &x, l, Some(&three), &[]),
        Err(Error::DimensionMismatch { .. })
    ));
    assert!(!wrong.exists());
}

#[test]
fn xyz_species_index_columns_are_checked() {
    let frame = |props: &str, a: &str, b: &str| {
        format!("2\nProperties=species:S:1:pos:R:3{props}\nX 0 0 0{a}\nX 1 0 0{b}\n")
    };
    let ok = frame(":species_index:I:1", " 1", " 0");
    assert_eq!(
        xyz::read_xyz_from(ok.as_bytes(), 3).unwrap().species,
        Some(vec![1, 0])
    );
    let cases = [
        (
            frame(":species_index:I:1", " -1", " 0"),
            "not a species index",
        ),
        (
            frame(":species_index:I:1", " 1.5", " 0"),
            "not a species index",
        ),
        (
            frame(":species_index:I:1", " 4294967296", " 0"),
            "from 0 to 4294967295",
        ),
        // A column declared twice: which one is meant would be the reader's guess.
        (
            frame(":species_index:I:1:species_index:I:1", " 1 0", " 0 1"),
            "declares the column \"species_index\" twice",
        ),
        (
            frame(":pos:R:3", " 0 0 0", " 0 0 0"),
            "declares the column \"pos\" twice",
        ),
        (frame(":species_index:R:1", " 1", " 0"), "must be I:1"),
        // A particle that changes species between frames.
        (
            ok.clone() + &frame(":species_index:I:1", " 0", " 0"),
            "a particle keeps its species",
        ),
        // A column in some frames only.
        (
            ok.clone() + &frame("", "", ""),
            "has no species_index column",
        ),
        (frame("", "", "") + &ok, "has a species_index column"),
    ];
    for (text, needle) in cases {
        match xyz::read_xyz_from(text.as_bytes(), 3) {
            Err(Error::Format { what }) => assert!(what.contains(needle), "{what}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn xyz_malformed_files_are_format_errors() {
    let head = "Properties=species:S:1:pos:R:3 energy=1.0";
    let frame = |n: &str, comment: &str, atoms: &[&str]| {
        let mut s = format!("{n}\n{comment}\n");
        for a in atoms {
            s.push_str(a);
            s.push('\n');
        }
        s
    };
    let good = frame("2", head, &["X 0 0 0", "X 1 0 0"]);
    assert!(xyz::read_xyz_from(good.as_bytes(), 3).is_ok());
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "no frames"),
        ("\n\n".to_string(), "no frames"),
        (
            frame("two", head, &["X 0 0 0", "X 1 0 0"]),
            "expected the atom count",
        ),
        (
            frame("-2", head, &["X 0 0 0", "X 1 0 0"]),
            "expected the atom count",
        ),
        ("2\n".to_string(), "before the comment line of frame 0"),
        (frame("2", head, &["X 0 0 0"]), "before atom 1 of frame 0"),
        (
            frame("2", head, &["X 0 0 0", "X 1 0"]),
            "3 columns, Properties declares 4",
        ),
        (
            frame("2", head, &["X 0 0 0", "X 1 zero 0"]),
            "coordinate 1 is not a number",
        ),
        (
            frame("2", head, &["X 0 0 0", "X 1 0 0 7"]),
            "5 columns, Properties declares 4",
        ),
        (
            frame("2", "Properties=species:S:1", &["X", "X"]),
            "declares no pos column",
        ),
        (
            frame("2", "Properties=species:S:1:pos:R", &["X 0 0 0", "X 1 0 0"]),
            "name:type:count",
        ),
        (
            frame("2", "Properties=species:S:1:pos:R:2", &["X 0 0", "X 1 0"]),
            "pos must be R:3",
        ),
        (
            frame(
                "2",
                "Properties=species:S:x:pos:R:3",
                &["X 0 0 0", "X 1 0 0"],
            ),
            "bad column count",
        ),
        (
            frame("2", "pbc=\"F F F", &["X 0 0 0", "X 1 0 0"]),
            "unterminated",
        ),
        (
            frame("2", "a=1 =2", &["X 0 0 0", "X 1 0 0"]),
            "without a key",
        ),
        (
            frame(
                "2",
                "a=1 a=2 Properties=species:S:1:pos:R:3",
                &["X 0 0 0", "X 1 0 0"],
            ),
            "twice",
        ),
        (
            frame("2", "plain", &["X 0 0", "X 1 0 0"]),
            "expected 'species x y z'",
        ),
        (
            format!(
                "{good}{}",
                frame("3", head, &["X 0 0 0", "X 1 0 0", "X 2 0 0"])
            ),
            "frame 1 has 3 atoms, the first frame 2",
        ),
        (
            format!(
                "{good}{}",
                frame(
                    "2",
                    "Properties=species:S:1:pos:R:3",
                    &["X 0 0 0", "X 1 0 0"]
                )
            ),
            "frame 1 has properties []",
        ),
        (
            format!(
                "{good}{}",
                frame(
                    "2",
                    "Properties=species:S:1:pos:R:3 log_q=2",
                    &["X 0 0 0", "X 1 0 0"]
                )
            ),
            "frame 1 has properties [\"log_q\"]",
        ),
        (
            format!("{good}junk\n"),
            "expected the atom count of frame 1",
        ),
        // Periodic frames: read as clusters, their distances across the box would be wrong.
        (
            frame(
                "2",
                &format!("{head} pbc=\"T T T\""),
                &["X 0 0 0", "X 1 0 0"],
            ),
            "frame 0 is periodic",
        ),
        (
            frame(
                "2",
                &format!("{head} pbc=\"F T F\""),
                &["X 0 0 0", "X 1 0 0"],
            ),
            "frame 0 is periodic",
        ),
        (
            frame(
                "2",
                &format!("Lattice=\"9 0 0 0 9 0 0 0 9\" {head}"),
                &["X 0 0 0", "X 1 0 0"],
            ),
            "frame 0 is periodic",
        ),
        // Without `Properties=` too: plain XYZ with a cell, as ASE writes it.
        (
            frame(
                "2",
                "pbc=\"T T T\" Lattice=\"3 0 0 0 3 0 0 0 3\"",
                &["X 0 0 0", "X 1 0 0"],
            ),
            "frame 0 is periodic",
        ),
        (
            frame(
                "2",
                "Lattice=\"3 0 0 0 3 0 0 0 3\"",
                &["X 0 0 0", "X 1 0 0"],
            ),
            "frame 0 is periodic",
        ),
        (
            frame("2", "pbc=T", &["X 0 0 0", "X 1 0 0"]),
            "frame 0 is periodic",
        ),
    ];
    for (text, needle) in cases {
        match xyz::read_xyz_from(text.as_bytes(), 3) {
            Err(Error::Format { what }) => {
                assert!(what.contains(needle), "message {what:?} lacks {needle:?}")
            }
            other => panic!("{text:?}: expected a format error with {needle:?}, got {other:?}"),
        }
    }
    // Line numbers point at the problem.
    let bad = frame("2", head, &["X 0 0 0", "X 1 nope 0"]);
    match xyz::read_xyz_from(bad.as_bytes(), 3) {
        Err(Error::Format { what }) => assert!(what.starts_with("line 4:"), "{what}"),
        other => panic!("{other:?}"),
    }
    // Not UTF-8.
    assert!(matches!(
        xyz::read_xyz_from(&b"2\n\xff\xfe\nX 0 0 0\nX 1 0 0\n"[..], 3),
        Err(Error::Format { .. })
    ));
}

#[test]
fn xyz_non_finite_and_invalid_inputs() {
    let head = "2\nProperties=species:S:1:pos:R:3";
    for (text, what) in [
        (
            format!("{head}\nX 0 0 0\nX nan 0 0\n"),
            "coordinate 0 is NaN",
        ),
        (
            format!("{head}\nX 0 0 0\nX 1 inf 0\n"),
            "coordinate 1 is inf",
        ),
        (
            format!("{head} energy=NaN\nX 0 0 0\nX 1 0 0\n"),
            "\"energy\" of frame 0 is NaN",
        ),
    ] {
        match xyz::read_xyz_from(text.as_bytes(), 3) {
            Err(Error::NonFinite { what: w }) => assert!(w.contains(what), "{w}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
    // Infinite properties are values (U = +∞).
    let inf = format!("{head} energy=inf\nX 0 0 0\nX 1 0 0\n");
    assert_eq!(
        xyz::read_xyz_from(inf.as_bytes(), 3)
            .unwrap()
            .property("energy"),
        Some(&[f64::INFINITY][..])
    );
    // A single atom is not a system; dim must be physical.
    assert!(matches!(
        xyz::read_xyz_from(&b"1\n\nX 0 0 0\n"[..], 3),
        Err(Error::InvalidArgument { .. })
    ));
    for dim in [0, 4] {
        assert!(matches!(
            xyz::read_xyz_from(inf.as_bytes(), dim),
            Err(Error::InvalidArgument { .. })
        ));
    }
    // Missing file.
    assert!(matches!(
        eio::read_xyz(scratch("xyz_missing").join("absent.xyz"), 3),
        Err(Error::Io { .. })
    ));

    // Writer checks.
    let dir = scratch("xyz_writer");
    let l = layout(2, 2);
    let x = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0];
    let path = dir.join("w.xyz");
    let ok: &[f64] = &[1.0, 2.0];
    assert!(eio::write_xyz(&path, &x, l, &[("energy", ok)]).is_ok());
    for name in ["", "2energy", "log q", "a=b", "Properties", "é"] {
        assert!(
            matches!(
                eio::write_xyz(&path, &x, l, &[(name, ok)]),
                Err(Error::InvalidArgument { .. })
            ),
            "{name:?}"
        );
    }
    assert!(matches!(
        eio::write_xyz(&path, &x, l, &[("a", ok), ("a", ok)]),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        eio::write_xyz(&path, &x, l, &[("energy", &[1.0][..])]),
        Err(Error::DimensionMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
    assert!(matches!(
        eio::write_xyz(&path, &x, l, &[("energy", &[1.0, f64::NAN][..])]),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        eio::write_xyz(&path, &x[..7], l, &[]),
        Err(Error::DimensionMismatch { .. })
    ));
    let mut nan = x;
    nan[3] = f64::NAN;
    assert!(matches!(
        eio::write_xyz(&path, &nan, l, &[]),
        Err(Error::NonFinite { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Atomic, independent saves; only regular files are read

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn concurrent_saves_to_one_folder_never_mix_their_files() {
    use eqflow::Flow;
    use eqflow::io::model;
    let dir = scratch("concurrent_saves");
    let flows = [Flow::new(4, 2, 1).unwrap(), Flow::new(4, 2, 2).unwrap()];
    assert_ne!(flows[0], flows[1]);
    // The same stem: the old writer's temporary (`with_extension("json.tmp")`) was shared.
    let paths = [dir.join("flow.first"), dir.join("flow.second")];
    std::thread::scope(|s| {
        for (flow, path) in flows.iter().zip(&paths) {
            s.spawn(move || {
                for _ in 0..200 {
                    model::save(flow, None, None, path).unwrap();
                    let (back, _) = model::load(path).unwrap();
                    assert_eq!(&back, flow, "{} holds another flow", path.display());
                }
            });
        }
    });
    for (flow, path) in flows.iter().zip(&paths) {
        assert_eq!(&model::load(path).unwrap().0, flow);
    }
    // No temporaries left behind.
    assert_eq!(listing(&dir), ["flow.first", "flow.second"]);
}

#[test]
fn readers_see_the_old_or_the_new_file_never_a_partial_one() {
    let dir = scratch("atomic_replacement");
    let l = layout(3, 2);
    let data = [configurations(400, 6), configurations(300, 6)];
    let (npy_path, xyz_path) = (dir.join("x.npy"), dir.join("y.xyz"));
    let write = |i: usize| {
        npy::write_configurations(&npy_path, &data[i], l, Dtype::F64, ConfigShape::Flat).unwrap();
        xyz::write_xyz(&xyz_path, &data[i], l, &[]).unwrap();
    };
    write(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for k in 0..100 {
                write(k % 2);
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let x = npy::read_configurations(&npy_path, l).unwrap();
                assert!(x == data[0] || x == data[1], "a partial .npy file");
                let x = xyz::read_xyz(&xyz_path, 2).unwrap().x;
                assert!(x == data[0] || x == data[1], "a partial XYZ file");
            }
        });
    });
    assert_eq!(listing(&dir), ["x.npy", "y.xyz"]);
}

#[test]
fn saving_to_a_folder_fails_and_leaves_the_folder_as_it_was() {
    use eqflow::Flow;
    use eqflow::io::model;
    let dir = scratch("save_to_folder");
    let target = dir.join("a_folder.json");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(dir.join("other.json"), "keep me").unwrap();
    let before = listing(&dir);
    let flow = Flow::new(4, 2, 1).unwrap();
    let l = layout(4, 2);
    let x = configurations(2, 8);
    let results = [
        model::save(&flow, None, None, &target),
        npy::write_configurations(&target, &x, l, Dtype::F64, ConfigShape::Flat),
        xyz::write_xyz(&target, &x, l, &[]),
    ];
    for r in results {
        match r {
            Err(Error::Io { what }) => assert!(what.contains("a_folder.json"), "{what}"),
            other => panic!("expected an i/o error, got {other:?}"),
        }
    }
    assert_eq!(listing(&dir), before);
    assert!(listing(&target).is_empty());
    assert_eq!(
        std::fs::read_to_string(dir.join("other.json")).unwrap(),
        "keep me"
    );
}

/// Runs `read` on a FIFO that nobody writes to, in a thread; it must fail within seconds
/// rather than block in `open`.
#[cfg(unix)]
fn fails_promptly_on_a_fifo(test: &str, read: fn(&Path) -> eqflow::Result<()>) {
    let dir = scratch(test);
    let fifo = dir.join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    // A reader that hangs would keep this thread blocked; the test then fails on the timeout
    // (and the thread is leaked, which ends with the test process).
    std::thread::spawn(move || {
        let _ = tx.send(read(&path));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Err(Error::Io { what })) => {
            assert!(what.contains("not a regular file"), "{what}")
        }
        Ok(other) => panic!("expected an i/o error, got {other:?}"),
        Err(_) => panic!("reading a FIFO with no writer blocked"),
    }
}

#[cfg(unix)]
#[test]
fn readers_refuse_a_fifo_without_blocking() {
    fails_promptly_on_a_fifo("fifo_model", |p| eqflow::io::model::load(p).map(|_| ()));
    fails_promptly_on_a_fifo("fifo_npy", |p| npy::read_array(p).map(|_| ()));
    fails_promptly_on_a_fifo("fifo_xyz", |p| xyz::read_xyz(p, 3).map(|_| ()));
}

#[test]
fn readers_refuse_a_folder() {
    let dir = scratch("read_folder");
    for r in [
        eqflow::io::model::load(&dir).map(|_| ()),
        npy::read_array(&dir).map(|_| ()),
        xyz::read_xyz(&dir, 3).map(|_| ()),
    ] {
        match r {
            Err(Error::Io { what }) => {
                assert!(what.contains("a directory, not a regular file"), "{what}")
            }
            other => panic!("expected an i/o error, got {other:?}"),
        }
    }
}

#[test]
fn npy_header_declaring_2_to_the_40_elements_is_refused_without_allocating_them() {
    // Issue 14: a tiny file whose header claims 2^40 doubles (8 TiB). The reader grows its
    // buffer with the bytes that arrive; trusting the header for one allocation would abort.
    let data = f64_bytes(&[0.5; 8]);
    for shape in [
        "(1099511627776,)",
        "(1048576, 1048576)",
        "(1099511627776, 3)",
    ] {
        let dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
        format_error_containing(read_bytes(&npy_bytes(&dict, &data)), "truncated data");
    }
}

#[test]
fn a_model_file_larger_than_any_model_is_refused_before_it_is_read() {
    use eqflow::io::model::{self, MAX_MODEL_FILE_BYTES};
    let path = scratch("huge_model").join("huge.json");
    // A sparse file: 1 GiB + 1 byte of size on disk costs nothing, and reading it whole would
    // cost the host a gibibyte.
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_MODEL_FILE_BYTES + 1).unwrap();
    drop(file);
    match model::load(&path) {
        Err(Error::Resource {
            need_bytes,
            limit_bytes,
            ..
        }) => {
            assert_eq!(need_bytes, u128::from(MAX_MODEL_FILE_BYTES + 1));
            assert_eq!(limit_bytes, MAX_MODEL_FILE_BYTES);
        }
        other => panic!("expected a resource error, got {other:?}"),
    }
    // A small file of zeros is read and refused for what it is: not JSON.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(1024).unwrap();
    drop(file);
    assert!(matches!(model::load(&path), Err(Error::Format { .. })));
    // Bytes that are not UTF-8 are a malformed file too (they were an I/O error, "stream did
    // not contain valid UTF-8", which says the file could not be read).
    std::fs::write(&path, b"{\"format\": \"eqflow-model\xff\"}").unwrap();
    match model::load(&path) {
        Err(Error::Format { what }) => assert!(what.contains("UTF-8"), "{what}"),
        other => panic!("expected a format error, got {other:?}"),
    }
    std::fs::remove_file(&path).unwrap();
}

/// A save replaces regular files only: a socket (standing for any special file: a FIFO, or a
/// device such as /dev/null, which a rename would replace by a file) is refused and left as it
/// was; a symbolic link is followed, so the link survives and names the new content; a link
/// to a folder or to nothing is refused. No temporary is left behind.
#[cfg(unix)]
#[test]
fn saves_replace_regular_files_only_and_write_through_symbolic_links() {
    use eqflow::Flow;
    use eqflow::io::model;
    use std::os::unix::fs::{FileTypeExt, symlink};
    let dir = scratch("save_special");
    let flows = [Flow::new(4, 2, 1).unwrap(), Flow::new(4, 2, 2).unwrap()];
    let socket = dir.join("socket.json");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let e = model::save(&flows[0], None, None, &socket)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("special file") && e.contains("socket.json"),
        "{e}"
    );
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket()
    );

    let real = dir.join("real.json");
    model::save(&flows[0], None, None, &real).unwrap();
    let link = dir.join("link.json");
    symlink("real.json", &link).unwrap();
    model::save(&flows[1], None, None, &link).unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(model::load(&real).unwrap().0, flows[1]);
    assert_eq!(model::load(&link).unwrap().0, flows[1]);

    let to_dir = dir.join("to_dir.json");
    std::fs::create_dir(dir.join("sub")).unwrap();
    symlink("sub", &to_dir).unwrap();
    let e = model::save(&flows[0], None, None, &to_dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("link to a directory"), "{e}");
    let dangling = dir.join("dangling.json");
    symlink("nowhere.json", &dangling).unwrap();
    let e = model::save(&flows[0], None, None, &dangling)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    assert!(!dir.join("nowhere.json").exists());
    assert_eq!(
        listing(&dir),
        [
            "dangling.json",
            "link.json",
            "real.json",
            "socket.json",
            "sub",
            "to_dir.json"
        ]
    );
}

/// A save keeps the permissions of the file it replaces (a private model stays private) and
/// refuses a file this process could not write (a read-only one, unless it runs as root, who
/// may write it anyway), leaving it and its folder as they were.
#[cfg(unix)]
#[test]
fn saves_keep_the_replaced_files_permissions_and_refuse_read_only_files() {
    use eqflow::Flow;
    use eqflow::io::model;
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("save_permissions");
    let flows = [Flow::new(4, 2, 1).unwrap(), Flow::new(4, 2, 2).unwrap()];
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

    let private = dir.join("private.json");
    model::save(&flows[0], None, None, &private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    model::save(&flows[1], None, None, &private).unwrap();
    assert_eq!(mode(&private), 0o600);
    assert_eq!(model::load(&private).unwrap().0, flows[1]);

    let locked = dir.join("locked.json");
    model::save(&flows[0], None, None, &locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = std::fs::read(&locked).unwrap();
    let writable = std::fs::OpenOptions::new()
        .write(true)
        .open(&locked)
        .is_ok();
    let saved = model::save(&flows[1], None, None, &locked);
    if writable {
        // Root: writing into the file would succeed too, so the save does, keeping the mode.
        saved.unwrap();
        assert_eq!(model::load(&locked).unwrap().0, flows[1]);
    } else {
        let e = saved.unwrap_err().to_string();
        assert!(
            e.contains("locked.json") && e.contains("cannot be written"),
            "{e}"
        );
        assert_eq!(std::fs::read(&locked).unwrap(), before);
    }
    assert_eq!(mode(&locked), 0o444);
    assert_eq!(listing(&dir), ["locked.json", "private.json"]);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o644)).unwrap();
}
