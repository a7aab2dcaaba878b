//! A restricted unpickler for PyTorch state dicts and TorchScript archives.
//! It executes nothing: the only globals accepted are the ones needed to
//! rebuild tensors and (ordered) dicts, and TorchScript's `__torch__.*`
//! classes, which become inert attribute holders ([`Val::Object`]; no code
//! of the archive's `code/` is ever read or run); any other global is an
//! error naming it. Lengths read from the stream are checked against the
//! bytes left before anything is allocated.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use flamingo_graphs::DType;

use crate::error::{corrupt, Error, Result};

/// A tensor as the pickle describes it: a view into a storage entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub dtype: Option<DType>,
    pub dtype_name: String,
    /// Storage key: the entry `<archive>/data/<key>`.
    pub key: String,
    /// Elements in the storage.
    pub storage_numel: u64,
    /// Offset of the view, in elements.
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Clone, Debug)]
pub enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Vec<Val>>),
    List(Rc<RefCell<Vec<Val>>>),
    Dict(Rc<RefCell<Vec<(Val, Val)>>>),
    Global(Global),
    /// An instance of a TorchScript class: its attributes by name.
    Object {
        class: Rc<str>,
        attrs: Rc<RefCell<Vec<(Val, Val)>>>,
    },
    Storage {
        dtype_name: String,
        key: String,
        numel: u64,
    },
    Tensor(Rc<TensorRef>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(&'static str),
    /// A TorchScript class (`__torch__.clip.model.CLIP`): instantiated empty.
    TorchClass(Rc<str>),
    /// `torch.jit._pickle` helpers that wrap a value: identity.
    JitIdentity,
}

const STORAGES: &[&str] = &[
    "FloatStorage",
    "HalfStorage",
    "BFloat16Storage",
    "DoubleStorage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
];

fn allowed_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch", s) => STORAGES
            .iter()
            .find(|x| **x == s)
            .map(|x| Global::Storage(x)),
        ("torch.jit._pickle", "restore_type_tag") => Some(Global::JitIdentity),
        (m, n) if m.starts_with("__torch__.") || m == "__torch__" => {
            Some(Global::TorchClass(format!("{m}.{n}").into()))
        }
        _ => None,
    }
}

/// The dtype of a torch storage class, if it is one we read.
pub fn storage_dtype(storage: &str) -> Option<DType> {
    match storage {
        "FloatStorage" => Some(DType::F32),
        "HalfStorage" => Some(DType::F16),
        "BFloat16Storage" => Some(DType::BF16),
        "LongStorage" => Some(DType::I64),
        _ => None,
    }
}

/// Element size of a storage class.
pub fn storage_elem_size(storage: &str) -> u64 {
    match storage {
        "DoubleStorage" | "LongStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        _ => 1,
    }
}

/// Bounds on what a pickle may build (`flamingo export --max-pickle-depth`,
/// `--max-pickle-objects`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickleLimits {
    /// Containers nested in containers (a state dict needs a handful; a
    /// TorchScript module tree a few dozen).
    pub max_depth: u32,
    /// Opcodes run, so values built.
    pub max_objects: u64,
}

impl Default for PickleLimits {
    fn default() -> Self {
        PickleLimits {
            max_depth: 1000,
            max_objects: 50_000_000,
        }
    }
}

struct Vm<'a> {
    path: &'a Path,
    b: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    marks: Vec<usize>,
    memo: HashMap<u32, Val>,
    limits: PickleLimits,
    ops: u64,
    /// Nesting depth of each container built, by address.
    depth: HashMap<usize, u32>,
}

/// Unpickles `data` (the `data.pkl` of a torch zip at `path`).
pub fn load(path: &Path, data: &[u8]) -> Result<Val> {
    load_with(path, data, &PickleLimits::default())
}

/// [`load`] within `limits`.
pub fn load_with(path: &Path, data: &[u8], limits: &PickleLimits) -> Result<Val> {
    let mut vm = Vm {
        path,
        b: data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        limits: *limits,
        ops: 0,
        depth: HashMap::new(),
    };
    vm.run()
}

/// The address of a container value (its nesting depth's key).
fn addr(v: &Val) -> Option<usize> {
    match v {
        Val::Tuple(t) => Some(Rc::as_ptr(t) as *const () as usize),
        Val::List(l) => Some(Rc::as_ptr(l) as *const () as usize),
        Val::Dict(d) => Some(Rc::as_ptr(d) as *const () as usize),
        Val::Object { attrs, .. } => Some(Rc::as_ptr(attrs) as *const () as usize),
        _ => None,
    }
}

impl Drop for Val {
    /// Without recursion: a pickle may nest containers far deeper than the
    /// stack could unwind.
    fn drop(&mut self) {
        fn take(v: &mut Val, out: &mut Vec<Val>) {
            match v {
                Val::Tuple(t) => {
                    if let Some(items) = Rc::get_mut(t) {
                        out.append(items);
                    }
                }
                Val::List(l) => {
                    if let Some(items) = Rc::get_mut(l) {
                        out.append(items.get_mut());
                    }
                }
                Val::Dict(d) | Val::Object { attrs: d, .. } => {
                    if let Some(items) = Rc::get_mut(d) {
                        for (k, v) in items.get_mut().drain(..) {
                            out.push(k);
                            out.push(v);
                        }
                    }
                }
                _ => {}
            }
        }
        let mut stack = Vec::new();
        take(self, &mut stack);
        while let Some(mut v) = stack.pop() {
            take(&mut v, &mut stack);
        }
    }
}

impl<'a> Vm<'a> {
    fn depth_of(&self, v: &Val) -> u32 {
        addr(v)
            .and_then(|a| self.depth.get(&a).copied())
            .unwrap_or(0)
    }

    /// Records that `parent` holds values as deep as `child`; refuses
    /// nesting past the limit.
    fn nest(&mut self, parent: &Val, child: u32) -> Result<()> {
        let Some(a) = addr(parent) else {
            return Ok(());
        };
        let d = child.saturating_add(1);
        if d > self.limits.max_depth {
            return Err(self.err(format!(
                "containers nested deeper than --max-pickle-depth {}",
                self.limits.max_depth
            )));
        }
        let e = self.depth.entry(a).or_insert(0);
        *e = (*e).max(d);
        Ok(())
    }

    /// [`Self::nest`] for every value in `items`.
    fn nest_all(&mut self, parent: &Val, items: &[Val]) -> Result<()> {
        let child = items.iter().map(|v| self.depth_of(v)).max().unwrap_or(0);
        if !items.is_empty() {
            self.nest(parent, child)?;
        }
        Ok(())
    }

    fn err(&self, m: impl std::fmt::Display) -> Error {
        corrupt(self.path, format!("pickle at byte {}: {m}", self.pos))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| self.err(format!("needs {n} bytes, the stream ends first")))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.b[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.err("unterminated GLOBAL"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn string(&mut self, n: u64) -> Result<String> {
        let n = usize::try_from(n).map_err(|_| self.err("string length overflows"))?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.err("invalid UTF-8 string"))
    }
    fn pop(&mut self) -> Result<Val> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.err("pop across a MARK"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Val>> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK past the stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn top(&mut self) -> Result<&mut Val> {
        self.stack
            .last_mut()
            .ok_or_else(|| corrupt(self.path, "stack underflow"))
    }
    fn global(&self, module: &str, name: &str) -> Result<Val> {
        allowed_global(module, name)
            .map(Val::Global)
            .ok_or_else(|| Error::ForbiddenGlobal {
                path: self.path.display().to_string(),
                global: format!("{module}.{name}"),
            })
    }
    fn memo_get(&self, k: u32) -> Result<Val> {
        self.memo
            .get(&k)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {k} unset")))
    }

    fn run(&mut self) -> Result<Val> {
        loop {
            let op = self.u8()?;
            self.ops += 1;
            if self.ops > self.limits.max_objects {
                return Err(self.err(format!(
                    "more than --max-pickle-objects {} values",
                    self.limits.max_objects
                )));
            }
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'}' => self.stack.push(Val::Dict(Default::default())),
                b']' => self.stack.push(Val::List(Default::default())),
                b')' => self.stack.push(Val::Tuple(Rc::new(vec![]))),
                b'(' => self.marks.push(self.stack.len()),
                b't' => {
                    let items = self.pop_mark()?;
                    let child = items.iter().map(|v| self.depth_of(v)).max();
                    let t = Val::Tuple(Rc::new(items));
                    if let Some(c) = child {
                        self.nest(&t, c)?;
                    }
                    self.stack.push(t);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let child = items.iter().map(|v| self.depth_of(v)).max();
                    let t = Val::Tuple(Rc::new(items));
                    if let Some(c) = child {
                        self.nest(&t, c)?;
                    }
                    self.stack.push(t);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let child = items.iter().map(|v| self.depth_of(v)).max();
                    let l = Val::List(Rc::new(RefCell::new(items)));
                    if let Some(c) = child {
                        self.nest(&l, c)?;
                    }
                    self.stack.push(l);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let child = items.iter().map(|v| self.depth_of(v)).max();
                    let pairs = pairs(items).ok_or_else(|| self.err("odd DICT items"))?;
                    let d = Val::Dict(Rc::new(RefCell::new(pairs)));
                    if let Some(c) = child {
                        self.nest(&d, c)?;
                    }
                    self.stack.push(d);
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let k = self.u32()?;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let s = self.string(n)?;
                    self.stack.push(Val::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    let s = self.string(n)?;
                    self.stack.push(Val::Str(s));
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = self.string(n)?;
                    self.stack.push(Val::Str(s));
                }
                b'B' | b'C' => {
                    let n = if op == b'B' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let s = self.take(n)?.to_vec();
                    self.stack.push(Val::Bytes(s));
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(Val::Int(v));
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Val::Int(v));
                }
                b'M' => {
                    let s = self.take(2)?;
                    self.stack
                        .push(Val::Int(u16::from_le_bytes([s[0], s[1]]) as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?;
                    if n > 8 {
                        return Err(self.err("LONG1 wider than 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (i, &c) in s.iter().enumerate() {
                        v |= (c as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && s[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Val::Int(v));
                }
                b'G' => {
                    let s = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(s);
                    self.stack.push(Val::Float(f64::from_be_bytes(a)));
                }
                0x88 => self.stack.push(Val::Bool(true)),
                0x89 => self.stack.push(Val::Bool(false)),
                b'N' => self.stack.push(Val::None),
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Val::Str(m), Val::Str(n)) => {
                            let g = self.global(m, n)?;
                            self.stack.push(g);
                        }
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.reduce(f, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    // NEWOBJ: `cls.__new__(cls, *args)`, TorchScript classes only
                    let _args = self.pop()?;
                    match &self.pop()? {
                        Val::Global(Global::TorchClass(class)) => self.stack.push(Val::Object {
                            class: class.clone(),
                            attrs: Default::default(),
                        }),
                        _ => {
                            return Err(
                                self.err("NEWOBJ of something that is not a TorchScript class")
                            )
                        }
                    }
                }
                b'b' => {
                    // BUILD: a TorchScript object's attributes; the state of
                    // an OrderedDict (its `_metadata`) is ignored
                    let state = self.pop()?;
                    let child = self.depth_of(&state);
                    let top = self.top()?.clone();
                    self.nest(&top, child)?;
                    match (self.top()?, &state) {
                        (Val::Object { attrs, .. }, Val::Dict(d)) => {
                            attrs.borrow_mut().extend(d.borrow().iter().cloned())
                        }
                        (Val::Dict(_) | Val::Tensor(_), _) => {}
                        _ => return Err(self.err("BUILD on an object that is not a dict")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let child = self.depth_of(&v).max(self.depth_of(&k));
                    let top = self.top()?.clone();
                    self.nest(&top, child)?;
                    match self.top()? {
                        Val::Dict(d) => d.borrow_mut().push((k, v)),
                        _ => return Err(self.err("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let top = self.top()?.clone();
                    self.nest_all(&top, &items)?;
                    let p = pairs(items).ok_or_else(|| self.err("odd SETITEMS items"))?;
                    match self.top()? {
                        Val::Dict(d) => d.borrow_mut().extend(p),
                        _ => return Err(self.err("SETITEMS on a non-dict")),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    let child = self.depth_of(&v);
                    let top = self.top()?.clone();
                    self.nest(&top, child)?;
                    match self.top()? {
                        Val::List(l) => l.borrow_mut().push(v),
                        _ => return Err(self.err("APPEND on a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let top = self.top()?.clone();
                    self.nest_all(&top, &items)?;
                    match self.top()? {
                        Val::List(l) => l.borrow_mut().extend(items),
                        _ => return Err(self.err("APPENDS on a non-list")),
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                other => {
                    return Err(self.err(format!(
                        "unsupported pickle opcode 0x{other:02x} (not a torch state dict?)"
                    )))
                }
            }
        }
    }

    fn persistent(&self, pid: Val) -> Result<Val> {
        let Val::Tuple(t) = &pid else {
            return Err(self.err("persistent id is not a tuple"));
        };
        match &t[..] {
            [Val::Str(kind), Val::Global(Global::Storage(st)), Val::Str(key), _loc, Val::Int(numel)]
                if kind == "storage" && *numel >= 0 =>
            {
                Ok(Val::Storage {
                    dtype_name: st.to_string(),
                    key: key.clone(),
                    numel: *numel as u64,
                })
            }
            _ => Err(self.err("persistent id is not a torch storage reference")),
        }
    }

    fn reduce(&self, f: Val, args: Val) -> Result<Val> {
        let Val::Tuple(args) = &args else {
            return Err(self.err("REDUCE arguments are not a tuple"));
        };
        match &f {
            Val::Global(Global::OrderedDict) => Ok(Val::Dict(Default::default())),
            Val::Global(Global::RebuildTensorV2) => match &args[..] {
                [Val::Storage {
                    dtype_name,
                    key,
                    numel,
                }, Val::Int(offset), Val::Tuple(size), Val::Tuple(stride), ..] => {
                    let dims = |t: &[Val]| -> Result<Vec<usize>> {
                        t.iter()
                            .map(|v| match v {
                                Val::Int(i) if *i >= 0 => Ok(*i as usize),
                                _ => Err(self.err("tensor size/stride is not a non-negative int")),
                            })
                            .collect()
                    };
                    if *offset < 0 {
                        return Err(self.err("negative storage offset"));
                    }
                    Ok(Val::Tensor(Rc::new(TensorRef {
                        dtype: storage_dtype(dtype_name),
                        dtype_name: dtype_name.clone(),
                        key: key.clone(),
                        storage_numel: *numel,
                        offset: *offset as u64,
                        shape: dims(size)?,
                        stride: dims(stride)?,
                    })))
                }
                _ => Err(self.err("unexpected arguments to _rebuild_tensor_v2")),
            },
            Val::Global(Global::RebuildParameter) => match args.first() {
                Some(t @ Val::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.err("unexpected arguments to _rebuild_parameter")),
            },
            Val::Global(Global::JitIdentity) => args
                .first()
                .cloned()
                .ok_or_else(|| self.err("restore_type_tag without a value")),
            Val::Global(Global::Storage(s)) => Err(self.err(format!("cannot call torch.{s}"))),
            Val::Global(Global::TorchClass(c)) => {
                Err(self.err(format!("cannot call the TorchScript class {c}")))
            }
            _ => Err(self.err("REDUCE on something that is not callable")),
        }
    }
}

fn pairs(items: Vec<Val>) -> Option<Vec<(Val, Val)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_globals_are_named_and_never_called() {
        // pickle of `os.system("echo hi")`, protocol 2
        let evil = b"\x80\x02cos\nsystem\nq\x00X\x07\x00\x00\x00echo hiq\x01\x85q\x02Rq\x03.";
        let err = load(Path::new("evil.pt"), evil).unwrap_err();
        assert!(
            matches!(err, Error::ForbiddenGlobal { ref global, .. } if global == "os.system"),
            "{err}"
        );
        assert!(err.to_string().contains("evil.pt"));
    }

    #[test]
    fn torchscript_objects_are_attribute_holders_and_nothing_runs() {
        // __torch__.m.M() with state {"w": 1}: NEWOBJ then BUILD
        let p = b"\x80\x02c__torch__.m\nM\nq\x00)\x81}q\x01(X\x01\x00\x00\x00wK\x01ub.";
        let v = load(Path::new("m.pt"), p).unwrap();
        let Val::Object { class, attrs } = &v else {
            panic!("not an object")
        };
        assert_eq!(&**class, "__torch__.m.M");
        assert!(matches!(&attrs.borrow()[0], (Val::Str(k), Val::Int(1)) if k == "w"));
        // calling a class (REDUCE) is refused; so is builtins.eval
        let call = b"\x80\x02c__torch__.m\nM\n)R.";
        assert!(load(Path::new("m.pt"), call).is_err());
        let eval = b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.";
        let err = load(Path::new("m.pt"), eval).unwrap_err();
        assert!(
            matches!(err, Error::ForbiddenGlobal { ref global, .. } if global == "builtins.eval"),
            "{err}"
        );
    }

    #[test]
    fn a_lying_length_is_an_error_not_an_allocation() {
        // BINUNICODE claiming 4 GB
        let bad = b"\x80\x02X\xff\xff\xff\xff";
        let err = load(Path::new("bad.pt"), bad).unwrap_err();
        assert!(err.to_string().contains("stream ends first"), "{err}");
    }

    #[test]
    fn ordered_dicts_of_ints_round_trip() {
        // collections.OrderedDict([("a", 1), ("b", 300)]) at protocol 2, as torch writes dicts
        let p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aq\x02K\x01X\x01\x00\x00\x00bq\x03M,\x01u.";
        let v = load(Path::new("x"), p).unwrap();
        let Val::Dict(d) = &v else {
            panic!("not a dict")
        };
        let d = d.borrow();
        assert_eq!(d.len(), 2);
        assert!(matches!((&d[1].0, &d[1].1), (Val::Str(k), Val::Int(300)) if k == "b"));
    }

    #[test]
    fn deep_nesting_is_refused_and_drops_without_recursion() {
        // 200k nested lists: `]` x n then APPEND x (n - 1)
        let n = 200_000;
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        let err = load(Path::new("deep.pt"), &p).unwrap_err().to_string();
        assert!(err.contains("--max-pickle-depth"), "{err}");
        // allowed deeper, it loads and drops without overflowing the stack
        let deep = PickleLimits {
            max_depth: u32::MAX,
            ..Default::default()
        };
        drop(load_with(Path::new("deep.pt"), &p, &deep).unwrap());
        let few = PickleLimits {
            max_objects: 10,
            ..Default::default()
        };
        let err = load_with(Path::new("many.pt"), &p, &few)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--max-pickle-objects"), "{err}");
    }

    #[test]
    fn truncated_streams_are_errors() {
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a";
        assert!(load(Path::new("t"), p).is_err());
    }
}
