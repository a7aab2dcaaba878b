//! The bad-input corpus, run through the built binary: every input a user
//! (or an attacker) might feed in, made here from the bundled fixtures (the
//! corpus is this file's code, not hand-edited binaries; set
//! `FLAMINGO_BAD_INPUTS_OUT=DIR` to keep it). For each: exit code 1 (never
//! 101 or a signal), a message naming the file and the problem, peak
//! resident memory under 512 MB, a bounded run time (no hang), and nothing
//! left behind (no output, no `.partial-` directory, inputs untouched).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// What a run did: exit code (None: killed by a signal), stderr, peak RSS.
struct Run {
    code: Option<i32>,
    stderr: String,
    max_rss_kb: i64,
    secs: f64,
}

/// Runs the binary with `args`, killed after `limit`; its own peak memory
/// comes from `wait4`, which also reaps it (so `Child::wait` is not called).
#[allow(clippy::zombie_processes)]
fn run(args: &[String], limit: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flamingo"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the flamingo binary");
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let start = Instant::now();
    let mut status = 0;
    // SAFETY: plain libc calls on our own child's pid
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if start.elapsed() > limit {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Run {
        code,
        stderr: reader.join().unwrap_or_default(),
        max_rss_kb: usage.ru_maxrss,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// `flamingo export` of the tiny-mpt fixture to `out`, with `extra` flags.
fn export_tiny(out: &Path, extra: &[&str]) -> Command {
    let fx = fixture("tiny-mpt");
    let mut c = Command::new(env!("CARGO_BIN_EXE_flamingo"));
    c.args([
        "export",
        "--clip",
        &s(&fx.join("clip/open_clip_pytorch_model.bin")),
        "--lm",
        &s(&fx.join("lm")),
        "--checkpoint",
        &s(&fx.join("checkpoint.pt")),
        "--tokenizer",
        &s(&fx.join("tokenizer")),
        "--out",
        &s(out),
    ])
    .args(extra);
    c
}

/// A corpus entry: arguments, words the message must hold, and an
/// output path that must not exist afterwards.
struct Case {
    name: &'static str,
    args: Vec<String>,
    needles: Vec<String>,
    absent: Option<PathBuf>,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Rewrites the stored zip at `path` entry by entry with `edit`.
fn edit_zip(path: &Path, edit: impl Fn(&str, Vec<u8>) -> Vec<u8>) {
    let src = std::fs::read(path).unwrap();
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(src)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut b).unwrap();
        out.start_file(name.clone(), opts).unwrap();
        out.write_all(&edit(&name, b)).unwrap();
    }
    std::fs::write(path, out.finish().unwrap().into_inner()).unwrap();
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a plain libc call on a path we own
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A PNG that claims `w` x `h` pixels in a few bytes: signature, IHDR,
/// an IDAT that ends at once, IEND.
fn huge_png(path: &Path, w: u32, h: u32) {
    let mut v = Vec::new();
    v.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut v, b"IHDR", &ihdr);
    chunk(&mut v, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(&mut v, b"IEND", &[]);
    std::fs::write(path, v).unwrap();
}

fn chunk(v: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut c = kind.to_vec();
    c.extend_from_slice(data);
    v.extend_from_slice(&c);
    v.extend_from_slice(&crc32fast::hash(&c).to_be_bytes());
}

/// The corpus, made in `root` from the fixtures and an export of tiny-mpt.
fn corpus(root: &Path, model: &Path) -> Vec<Case> {
    let fx = fixture("tiny-mpt");
    let args = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let export_args = |dir: &Path, out: &Path| {
        args(&[
            "export",
            "--clip",
            &s(&dir.join("clip/open_clip_pytorch_model.bin")),
            "--lm",
            &s(&dir.join("lm")),
            "--checkpoint",
            &s(&dir.join("checkpoint.pt")),
            "--tokenizer",
            &s(&dir.join("tokenizer")),
            "--out",
            &s(out),
        ])
    };
    let copy = |tag: &str| {
        let d = root.join(tag);
        copy_dir(&fx, &d);
        d
    };
    let gen = |extra: &[&str]| {
        let mut a = args(&["generate", "--model", &s(model), "--max-new-tokens", "2"]);
        a.extend(args(extra));
        a
    };
    let img = s(&fx.join("images/img0.png"));
    let mut cases = Vec::new();

    // --- data loss: --force never deletes what is not an export of ours
    let d = copy("force-lm");
    let mut a = export_args(&d, &d.join("lm"));
    a.push("--force".into());
    cases.push(Case {
        name: "export --force onto the input LM directory",
        args: a,
        needles: vec!["refusing to replace".into(), "lm".into()],
        absent: None,
    });
    let d = copy("force-other");
    let other = root.join("unrelated");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let mut a = export_args(&d, &other);
    a.push("--force".into());
    cases.push(Case {
        name: "export --force onto a folder of unrelated files",
        args: a,
        needles: vec![
            "not an export written by flamingo".into(),
            "unrelated".into(),
        ],
        absent: None,
    });
    let mut a = args(&["quantize", "--weights", "int8", &s(model)]);
    a.push(s(model.parent().unwrap()));
    a.push("--force".into());
    cases.push(Case {
        name: "quantize --force onto the input model's parent",
        args: a,
        needles: vec!["refusing to replace".into()],
        absent: None,
    });
    let fifo = root.join("out.fifo");
    mkfifo(&fifo);
    cases.push(Case {
        name: "encode --out a FIFO",
        args: args(&[
            "encode",
            "--model",
            &s(model),
            "--image",
            &img,
            "--out",
            &s(&fifo),
        ]),
        needles: vec!["out.fifo".into(), "not a regular file".into()],
        absent: None,
    });
    let link = root.join("out.link");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    cases.push(Case {
        name: "encode --out a symlink, even with --force",
        args: args(&[
            "encode",
            "--model",
            &s(model),
            "--image",
            &img,
            "--out",
            &s(&link),
            "--force",
        ]),
        needles: vec!["out.link".into(), "not a regular file".into()],
        absent: None,
    });

    // --- crashes
    let d = copy("nested-pickle");
    edit_zip(&d.join("checkpoint.pt"), |n, b| {
        if n.ends_with("data.pkl") {
            let k = 200_000;
            let mut p = b"\x80\x02".to_vec();
            p.extend(std::iter::repeat_n(b']', k));
            p.extend(std::iter::repeat_n(b'a', k - 1));
            p.push(b'.');
            p
        } else {
            b
        }
    });
    cases.push(Case {
        name: "a checkpoint pickle nesting 200k lists",
        args: export_args(&d, &d.join("out")),
        needles: vec!["checkpoint.pt".into(), "--max-pickle-depth".into()],
        absent: Some(d.join("out")),
    });
    // --- unbounded resources
    cases.push(Case {
        name: "--num-beams 10000",
        args: gen(&[
            "--prompt",
            "<image>a",
            "--image",
            &img,
            "--num-beams",
            "10000",
        ]),
        needles: vec!["--max-beams".into()],
        absent: None,
    });
    let big = root.join("huge.png");
    huge_png(&big, 20000, 20000);
    cases.push(Case {
        name: "a PNG claiming 20000 x 20000 pixels",
        args: gen(&["--prompt", "<image>a", "--image", &s(&big)]),
        needles: vec!["huge.png".into(), "--max-image-pixels".into()],
        absent: None,
    });
    cases.push(Case {
        name: "/dev/zero as media",
        args: gen(&["--prompt", "<image>a", "--image", "/dev/zero"]),
        needles: vec!["/dev/zero".into(), "character device".into()],
        absent: None,
    });
    let many: Vec<&str> = std::iter::repeat_n(["--image", img.as_str()], 65)
        .flatten()
        .collect();
    let mut a = gen(&["--prompt", &"<image>".repeat(65)]);
    a.extend(many.iter().map(|x| x.to_string()));
    cases.push(Case {
        name: "65 images in one request",
        args: a,
        needles: vec!["--max-media".into()],
        absent: None,
    });
    let mut a = args(&[
        "score",
        "--model",
        &s(model),
        "--prompt",
        "<image>a",
        "--image",
        &img,
    ]);
    for i in 0..300 {
        a.push("--candidate".into());
        a.push(format!(" c{i}"));
    }
    cases.push(Case {
        name: "300 candidates",
        args: a,
        needles: vec!["--max-candidates".into()],
        absent: None,
    });

    // --- wrong arithmetic
    cases.push(Case {
        name: "--max-new-tokens u64::MAX",
        args: args(&[
            "generate",
            "--model",
            &s(model),
            "--prompt",
            "<image>a",
            "--image",
            &img,
            "--max-new-tokens",
            "18446744073709551615",
        ]),
        needles: vec!["max_new_tokens".into()],
        absent: None,
    });

    // --- hangs
    let d = copy("fifo-clip");
    let clip = d.join("clip/open_clip_pytorch_model.bin");
    std::fs::remove_file(&clip).unwrap();
    mkfifo(&clip);
    cases.push(Case {
        name: "a FIFO as --clip",
        args: export_args(&d, &d.join("out")),
        needles: vec![
            "open_clip_pytorch_model.bin".into(),
            "not a regular file".into(),
        ],
        absent: Some(d.join("out")),
    });
    let media_fifo = root.join("media.fifo");
    mkfifo(&media_fifo);
    cases.push(Case {
        name: "a FIFO as media",
        args: gen(&["--prompt", "<image>a", "--image", &s(&media_fifo)]),
        needles: vec!["media.fifo".into(), "FIFO".into()],
        absent: None,
    });
    let d = copy("fifo-config");
    let cfg = d.join("lm/config.json");
    std::fs::remove_file(&cfg).unwrap();
    mkfifo(&cfg);
    cases.push(Case {
        name: "a FIFO as the LM config",
        args: export_args(&d, &d.join("out")),
        needles: vec!["config.json".into(), "not a regular file".into()],
        absent: Some(d.join("out")),
    });

    // --- integrity
    let bad = root.join("corrupt-model");
    copy_dir(model, &bad);
    let data = bad.join("decoder.onnx.data");
    let mut b = std::fs::read(&data).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&data, b).unwrap();
    cases.push(Case {
        name: "a corrupted .onnx.data",
        args: args(&["generate", "--model", &s(&bad), "--prompt", "a"]),
        needles: vec!["decoder.onnx.data".into(), "sha256".into()],
        absent: None,
    });
    cases.push(Case {
        name: "quantize a corrupted export",
        args: args(&[
            "quantize",
            "--weights",
            "int8",
            &s(&bad),
            &s(&root.join("q-out")),
        ]),
        needles: vec!["decoder.onnx.data".into(), "sha256".into()],
        absent: Some(root.join("q-out")),
    });
    let d = copy("bitflip");
    let ck = d.join("checkpoint.pt");
    let mut b = std::fs::read(&ck).unwrap();
    // a byte of the first storage (well past the pickle)
    let at = b.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap() / 2;
    b[at] ^= 0x01;
    std::fs::write(&ck, b).unwrap();
    cases.push(Case {
        name: "a bit-flipped checkpoint.pt",
        args: export_args(&d, &d.join("out")),
        needles: vec!["checkpoint.pt".into(), "CRC-32".into()],
        absent: Some(d.join("out")),
    });
    for (tag, path) in [("dotdot", "../../etc/passwd"), ("absolute", "/etc/passwd")] {
        let m = root.join(format!("paths-{tag}"));
        copy_dir(model, &m);
        let mf = m.join("manifest.json");
        let text = std::fs::read_to_string(&mf).unwrap();
        std::fs::write(
            &mf,
            text.replace(
                "\"file\": \"decoder.onnx\"",
                &format!("\"file\": \"{path}\""),
            ),
        )
        .unwrap();
        cases.push(Case {
            name: "a manifest naming a path outside the export",
            args: args(&["generate", "--model", &s(&m), "--prompt", "a"]),
            needles: vec![path.into(), "not a path inside the export".into()],
            absent: None,
        });
    }

    // --- exports that cannot run
    let d = copy("max-seq-0");
    let cfg = d.join("lm/config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"max_seq_len\": 128", "\"max_seq_len\": 0");
    std::fs::write(&cfg, text).unwrap();
    cases.push(Case {
        name: "max_seq_len 0",
        args: export_args(&d, &d.join("out")),
        needles: vec!["config.json".into(), "make no model".into()],
        absent: Some(d.join("out")),
    });
    let d = copy("dup-zip");
    {
        // the zip crate writes unique names: write a placeholder of the same
        // length, then rename it in the bytes (the CRC covers only the data)
        let ck = d.join("checkpoint.pt");
        let src = std::fs::read(&ck).unwrap();
        let mut zin = zip::ZipArchive::new(std::io::Cursor::new(src)).unwrap();
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut dup = None;
        for i in 0..zin.len() {
            let mut f = zin.by_index(i).unwrap();
            let name = f.name().unwrap().to_string();
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut b).unwrap();
            out.start_file(name.clone(), opts).unwrap();
            out.write_all(&b).unwrap();
            if dup.is_none() && name.ends_with("/data/0") {
                let placeholder = format!("{}_", &name[..name.len() - 1]);
                out.start_file(placeholder.clone(), opts).unwrap();
                out.write_all(&b).unwrap();
                dup = Some((placeholder, name));
            }
        }
        let mut bytes = out.finish().unwrap().into_inner();
        let (from, to) = dup.unwrap();
        let (from, to) = (from.into_bytes(), to.into_bytes());
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if bytes[i..i + from.len()] == from[..] {
                bytes[i..i + from.len()].copy_from_slice(&to);
            }
            i += 1;
        }
        std::fs::write(&ck, bytes).unwrap();
    }
    cases.push(Case {
        name: "a zip with a duplicate entry",
        args: export_args(&d, &d.join("out")),
        needles: vec!["checkpoint.pt".into()],
        absent: Some(d.join("out")),
    });

    // --- messages that mislead
    let d = copy("clip-dir");
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut a = export_args(&d, &d.join("out"));
    a[2] = s(&empty);
    cases.push(Case {
        name: "a directory without CLIP weights as --clip",
        args: a,
        needles: vec!["a directory without".into()],
        absent: Some(d.join("out")),
    });
    let d = copy("nlayers");
    let cfg = d.join("lm/config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"n_layers\": 2", "\"n_layers\": \"two\"");
    std::fs::write(&cfg, text).unwrap();
    cases.push(Case {
        name: "a non-integer n_layers",
        args: export_args(&d, &d.join("out")),
        needles: vec!["config.json".into(), "invalid type".into()],
        absent: Some(d.join("out")),
    });
    let batch = root.join("bad-utf8.jsonl");
    let mut b = format!("{{\"prompt\": \"<image>a\", \"media\": [\"{img}\"]}}\n").into_bytes();
    b.extend_from_slice(b"{\"prompt\": \"\xff\xfe\"}\n");
    std::fs::write(&batch, b).unwrap();
    cases.push(Case {
        name: "invalid UTF-8 in a batch file",
        args: args(&[
            "generate",
            "--model",
            &s(model),
            "--batch",
            &s(&batch),
            "--max-new-tokens",
            "2",
        ]),
        needles: vec![
            "1 request(s) failed".into(),
            "bad-utf8.jsonl:2".into(),
            "UTF-8".into(),
        ],
        absent: None,
    });
    let m = root.join("mismatch");
    copy_dir(model, &m);
    let mf = m.join("manifest.json");
    let text = std::fs::read_to_string(&mf).unwrap().replacen(
        "\"name\": \"pixel_values\"",
        "\"name\": \"pixels\"",
        1,
    );
    std::fs::write(&mf, text).unwrap();
    cases.push(Case {
        name: "a manifest whose graph I/O the graph does not have",
        args: args(&[
            "generate",
            "--model",
            &s(&m),
            "--prompt",
            "a",
            "--no-verify",
        ]),
        needles: vec![
            "vision_encoder.onnx".into(),
            "differ from manifest.json".into(),
            "pixels".into(),
        ],
        absent: None,
    });

    // --- the rest of the class: media
    let media_case = |name: &'static str, file: &Path, needles: &[&str]| Case {
        name,
        args: gen(&["--prompt", "<image>a", "--image", &s(file)]),
        needles: needles.iter().map(|n| n.to_string()).collect(),
        absent: None,
    };
    let empty = root.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    cases.push(media_case(
        "an empty image",
        &empty,
        &["empty.png", "not a readable image"],
    ));
    let trunc = root.join("truncated.png");
    std::fs::write(
        &trunc,
        &std::fs::read(fx.join("images/img0.png")).unwrap()[..100],
    )
    .unwrap();
    cases.push(media_case(
        "a truncated PNG",
        &trunc,
        &["truncated.png", "not a readable image"],
    ));
    let text = root.join("text.jpg");
    std::fs::write(&text, b"hello, not a JPEG\n").unwrap();
    cases.push(media_case(
        "text named .jpg",
        &text,
        &["text.jpg", "not a readable image"],
    ));
    let sock = root.join("media.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    cases.push(media_case(
        "a socket as media",
        &sock,
        &["media.sock", "socket"],
    ));
    let (l1, l2) = (root.join("loop1.png"), root.join("loop2.png"));
    std::os::unix::fs::symlink(&l2, &l1).unwrap();
    std::os::unix::fs::symlink(&l1, &l2).unwrap();
    cases.push(media_case(
        "a symlink loop as media",
        &l1,
        &["loop1.png", "symbolic links"],
    ));
    cases.push(media_case("a directory as media", root, &["a directory"]));
    let wide = root.join("wide.png");
    huge_png(&wide, 1_000_000, 1);
    cases.push(media_case(
        "a PNG 1,000,000 pixels wide and 1 high",
        &wide,
        &["wide.png"],
    ));

    // --- prompts and options
    let opt_case = |name: &'static str, extra: &[&str], needles: &[&str]| Case {
        name,
        args: gen(extra),
        needles: needles.iter().map(|n| n.to_string()).collect(),
        absent: None,
    };
    cases.push(opt_case(
        "more <image> markers than images",
        &["--prompt", "<image><image>a", "--image", &img],
        &["2 <image> marker(s) but 1 media"],
    ));
    cases.push(opt_case(
        "an image without a marker",
        &["--prompt", "a", "--image", &img],
        &["0 <image> marker(s) but 1 media"],
    ));
    cases.push(opt_case(
        "an empty prompt",
        &["--prompt", ""],
        &["prompt is empty"],
    ));
    cases.push(opt_case(
        "--top-p 2",
        &["--prompt", "a", "--do-sample", "--top-p", "2"],
        &["top_p"],
    ));
    cases.push(opt_case(
        "--num-beams 0",
        &["--prompt", "a", "--num-beams", "0"],
        &["num_beams"],
    ));
    let long = "a ".repeat(5000);
    cases.push(opt_case(
        "a prompt longer than the context",
        &["--prompt", &long],
        &["context"],
    ));

    // --- model directories
    let model_case = |name: &'static str, dir: &Path, extra: &[&str], needles: &[&str]| {
        let mut a = args(&["generate", "--model", &s(dir), "--prompt", "a"]);
        a.extend(args(extra));
        Case {
            name,
            args: a,
            needles: needles.iter().map(|n| n.to_string()).collect(),
            absent: None,
        }
    };
    cases.push(model_case(
        "a file as --model",
        &fx.join("images/img0.png"),
        &[],
        &["img0.png", "a file, where a directory"],
    ));
    cases.push(model_case(
        "a directory that is no export as --model",
        &fx,
        &[],
        &["no manifest.json"],
    ));
    let edited = |tag: &str, file: &str, edit: &dyn Fn(Vec<u8>) -> Vec<u8>| {
        let m = root.join(tag);
        copy_dir(model, &m);
        let f = m.join(file);
        if let Ok(b) = std::fs::read(&f) {
            std::fs::write(&f, edit(b)).unwrap();
        }
        m
    };
    let m = edited("manifest-json", "manifest.json", &|b| {
        b[..b.len() / 2].to_vec()
    });
    cases.push(model_case(
        "a truncated manifest",
        &m,
        &[],
        &["manifest.json", "not a valid manifest"],
    ));
    let m = edited("onnx-trunc", "decoder.onnx", &|b| b[..b.len() / 2].to_vec());
    cases.push(model_case(
        "a truncated graph, unverified",
        &m,
        &["--no-verify"],
        &["decoder.onnx", "not a protobuf"],
    ));
    let m = edited("data-trunc", "decoder.onnx.data", &|b| {
        b[..b.len() / 2].to_vec()
    });
    cases.push(model_case(
        "truncated external weights, unverified",
        &m,
        &["--no-verify"],
        &["decoder.onnx"],
    ));
    let m = edited("tok-garbage", "tokenizer/tokenizer.json", &|_| {
        b"garbage".to_vec()
    });
    cases.push(model_case(
        "a garbage tokenizer.json, unverified",
        &m,
        &["--no-verify"],
        &["tokenizer.json", "not a tokenizer"],
    ));
    let m = edited("graph-missing", "resampler.onnx", &|b| b);
    std::fs::remove_file(m.join("resampler.onnx")).unwrap();
    cases.push(model_case(
        "a graph file missing",
        &m,
        &[],
        &["resampler.onnx", "No such file"],
    ));

    // --- export inputs
    let ex_case = |name: &'static str, a: Vec<String>, out: PathBuf, needles: &[&str]| Case {
        name,
        args: a,
        needles: needles.iter().map(|n| n.to_string()).collect(),
        absent: Some(out),
    };
    let d = copy("zero-clip");
    let mut a = export_args(&d, &d.join("out"));
    a[2] = "/dev/zero".into();
    cases.push(ex_case(
        "/dev/zero as --clip",
        a,
        d.join("out"),
        &["/dev/zero", "character device"],
    ));
    let d = copy("png-checkpoint");
    let mut a = export_args(&d, &d.join("out"));
    a[6] = img.clone();
    cases.push(ex_case(
        "a PNG as --checkpoint",
        a,
        d.join("out"),
        &[
            "img0.png",
            "neither a torch zip archive nor a safetensors file",
        ],
    ));
    let d = copy("file-tokenizer");
    let mut a = export_args(&d, &d.join("out"));
    a[8] = img.clone();
    cases.push(ex_case(
        "a file as --tokenizer",
        a,
        d.join("out"),
        &["img0.png", "directory holding `tokenizer.json`"],
    ));
    let st_edit =
        |tag: &str, edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>) -> String| {
            let d = copy(tag);
            let f = d.join("lm/model.safetensors");
            let b = std::fs::read(&f).unwrap();
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let mut header: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&b[8..8 + n]).unwrap();
            // offsets count from the data's start: the header may change length
            let text = edit(&mut header).into_bytes();
            let mut out = (text.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&text);
            out.extend_from_slice(&b[8 + n..]);
            std::fs::write(&f, out).unwrap();
            d
        };
    let d = st_edit("st-overlap", &|h| {
        // the second tensor (by offset) starts inside the first
        let mut by_off: Vec<(String, u64)> = h
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.get("data_offsets")?.get(0)?.as_u64()?)))
            .collect();
        by_off.sort_by_key(|x| x.1);
        let name = by_off[1].0.clone();
        let offs = h[&name]["data_offsets"].clone();
        let (s0, e0) = (offs[0].as_u64().unwrap(), offs[1].as_u64().unwrap());
        h[&name]["data_offsets"] = serde_json::json!([s0 - 4, e0 - 4]);
        serde_json::to_string(h).unwrap()
    });
    cases.push(ex_case(
        "overlapping safetensors offsets",
        export_args(&d, &d.join("out")),
        d.join("out"),
        &["model.safetensors", "overlap"],
    ));
    let d = st_edit("st-dup", &|h| {
        // a key written twice: the JSON text, not a map, can say that
        let text = serde_json::to_string(h).unwrap();
        let (k, v) = h.iter().find(|(k, _)| *k != "__metadata__").unwrap();
        let entry = format!("{}:{}", serde_json::to_string(k).unwrap(), v);
        format!("{{{entry},{}", &text[1..])
    });
    cases.push(ex_case(
        "a safetensors key given twice",
        export_args(&d, &d.join("out")),
        d.join("out"),
        &["model.safetensors", "appears twice"],
    ));
    let d = copy("badjson-config");
    std::fs::write(d.join("lm/config.json"), b"{\"n_layers\": 2,").unwrap();
    cases.push(ex_case(
        "a truncated LM config",
        export_args(&d, &d.join("out")),
        d.join("out"),
        &["config.json"],
    ));
    let d = copy("existing-out");
    std::fs::create_dir_all(d.join("out")).unwrap();
    std::fs::write(d.join("out/keep.txt"), b"mine").unwrap();
    cases.push(Case {
        name: "export onto an existing folder, no --force",
        args: export_args(&d, &d.join("out")),
        needles: vec!["out".into(), "--force".into()],
        absent: None,
    });
    let input = root.join("input.png");
    std::fs::copy(fx.join("images/img0.png"), &input).unwrap();
    cases.push(Case {
        name: "encode --out an existing input image",
        args: args(&[
            "encode",
            "--model",
            &s(model),
            "--image",
            &s(&input),
            "--out",
            &s(&input),
        ]),
        needles: vec!["input.png".into(), "--force".into()],
        absent: None,
    });
    // eval: absent data, a dataset file of the wrong format, a missing image
    let ev = root.join("eval");
    std::fs::create_dir_all(ev.join("val2014")).unwrap();
    let q = ev.join("questions.json");
    std::fs::write(
        &q,
        br#"{"questions": [{"image_id": 5, "question": "What?", "question_id": 50}]}"#,
    )
    .unwrap();
    let a = ev.join("annotations.json");
    std::fs::write(
        &a,
        br#"{"annotations": [{"question_id": 50, "answers": [{"answer": "x"}]}]}"#,
    )
    .unwrap();
    let karpathy = ev.join("dataset_coco.json");
    std::fs::write(&karpathy, br#"{"images": []}"#).unwrap();
    let eval_args = |task: &str, q: &Path| {
        let v = s(&ev.join("val2014"));
        args(&[
            "eval",
            "--model",
            &s(model),
            "--task",
            task,
            "--shots",
            "0",
            "--train-image-dir",
            &v,
            "--train-questions",
            &s(q),
            "--train-annotations",
            &s(&a),
            "--test-image-dir",
            &v,
            "--test-questions",
            &s(q),
            "--test-annotations",
            &s(&a),
        ])
    };
    cases.push(Case {
        name: "eval: a task whose data is absent",
        args: args(&["eval", "--model", &s(model), "--task", "coco"]),
        needles: vec!["--task coco needs --image-dir".into()],
        absent: None,
    });
    cases.push(Case {
        name: "eval: a Karpathy JSON as VQA questions",
        args: eval_args("vqav2", &karpathy),
        needles: vec!["dataset_coco.json".into(), "no `questions` list".into()],
        absent: None,
    });
    cases.push(Case {
        name: "eval: an image listed but missing",
        args: eval_args("vqav2", &q),
        needles: vec!["COCO_val2014_000000000005.jpg".into(), "missing".into()],
        absent: None,
    });
    cases.push(Case {
        name: "eval: VQA questions as HatefulMemes JSON lines",
        args: args(&[
            "eval",
            "--model",
            &s(model),
            "--task",
            "hateful_memes",
            "--image-dir",
            &s(&ev),
            "--train-annotations",
            &s(&q),
            "--test-annotations",
            &s(&q),
        ]),
        needles: vec!["questions.json: line 1".into(), "no `img`".into()],
        absent: None,
    });
    let inet = ev.join("imagenet");
    for split in ["train", "val"] {
        std::fs::create_dir_all(inet.join(split).join("n01440764")).unwrap();
    }
    cases.push(Case {
        name: "eval: an ImageNet tree that is not the 1000 classes",
        args: args(&[
            "eval",
            "--model",
            &s(model),
            "--task",
            "imagenet",
            "--imagenet-root",
            &s(&inet),
        ]),
        needles: vec![
            "imagenet/train".into(),
            "1 class folders for 1000 class names".into(),
        ],
        absent: None,
    });
    cases.push(Case {
        name: "eval: OK-VQA says why it is unavailable",
        args: args(&["eval", "--model", &s(model), "--task", "okvqa"]),
        needles: vec!["okvqa".into(), "NLTK".into()],
        absent: None,
    });
    std::mem::forget(_listener);
    cases
}

#[test]
fn every_bad_input_is_a_clear_error_within_bounds() {
    let keep = std::env::var_os("FLAMINGO_BAD_INPUTS_OUT").map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let root = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root).unwrap();
    let model = root.join("model/tiny-mpt");
    let out = export_tiny(&model, &["--force"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases = corpus(&root, &model);
    let mut failures = Vec::new();
    for c in &cases {
        let r = run(&c.args, Duration::from_secs(60));
        let mut why = Vec::new();
        if r.code != Some(1) {
            why.push(format!("exit {:?} (1 expected)", r.code));
        }
        if r.stderr.contains("panicked") {
            why.push("panicked".into());
        }
        for n in &c.needles {
            if !r.stderr.contains(n.as_str()) {
                why.push(format!("message lacks `{n}`"));
            }
        }
        if r.max_rss_kb > 512 * 1024 {
            why.push(format!("peak RSS {} MB", r.max_rss_kb / 1024));
        }
        if let Some(p) = &c.absent {
            if p.exists() {
                why.push(format!("left {}", p.display()));
            }
        }
        eprintln!(
            "{}: exit {:?}, {:.2} s, peak {} MB: {}",
            c.name,
            r.code,
            r.secs,
            r.max_rss_kb / 1024,
            r.stderr.trim().lines().last().unwrap_or("")
        );
        if !why.is_empty() {
            failures.push(format!(
                "{}: {}\n  stderr: {}",
                c.name,
                why.join("; "),
                r.stderr.trim()
            ));
        }
    }
    // nothing half-written anywhere in the corpus
    let mut partials = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".partial-") {
                partials.push(e.path());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            }
        }
    }
    assert!(partials.is_empty(), "left behind: {partials:?}");
    // the data the refused --force runs pointed at is all still there
    assert!(root.join("unrelated/notes.txt").exists());
    assert!(root.join("force-lm/lm/config.json").exists());
    assert!(model.join("manifest.json").exists());
    assert!(root.join("existing-out/out/keep.txt").exists());
    assert_eq!(
        std::fs::read(root.join("input.png")).unwrap(),
        std::fs::read(fixture("tiny-mpt").join("images/img0.png")).unwrap()
    );
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A batch streams through in chunks: its peak memory does not grow with
/// its length (10x the lines, a bounded difference).
#[test]
fn a_long_batch_runs_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    let fx = fixture("tiny-mpt");
    let ok = export_tiny(&model, &[]).status().unwrap();
    assert!(ok.success());
    let img = s(&fx.join("images/img0.png"));
    let mut peaks = Vec::new();
    for n in [40, 400] {
        let batch = tmp.path().join(format!("b{n}.jsonl"));
        let line = format!(
            "{{\"prompt\": \"<image>a photo of\", \"media\": [\"{img}\"], \"max_new_tokens\": 1}}\n"
        );
        std::fs::write(&batch, line.repeat(n)).unwrap();
        let args = [
            "generate".to_string(),
            "--model".into(),
            s(&model),
            "--batch".into(),
            s(&batch),
            "--json".into(),
        ];
        let r = run(&args, Duration::from_secs(120));
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        peaks.push(r.max_rss_kb);
    }
    eprintln!(
        "batch of 40: peak {} MB, of 400: {} MB",
        peaks[0] / 1024,
        peaks[1] / 1024
    );
    assert!(
        peaks[1] <= peaks[0] + 32 * 1024,
        "peak RSS grew from {} to {} MB with 10x the lines",
        peaks[0] / 1024,
        peaks[1] / 1024
    );
}

/// A path that is not UTF-8 is an error naming it, not a panic.
#[test]
fn a_non_utf8_argument_is_no_panic() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    let out = Command::new(env!("CARGO_BIN_EXE_flamingo"))
        .arg("generate")
        .arg("--model")
        .arg(tmp.path())
        .arg("--prompt")
        .arg("<image>a")
        .arg("--image")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// SIGTERM in the middle of an export leaves no partial directory.
#[test]
fn a_signal_during_an_export_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("of-mini");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flamingo"))
        .args([
            "export",
            "--preset",
            "of-mini",
            "--random-weights",
            "--out",
            &s(&out),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // wait for the partial directory to appear, then interrupt
    let start = Instant::now();
    let partial = loop {
        let found = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().contains(".partial-"));
        if let Some(e) = found {
            break e.path();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no partial directory appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: a plain libc call on our own child's pid
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
    assert!(!partial.exists(), "{} was left", partial.display());
    assert!(!out.exists());
}
