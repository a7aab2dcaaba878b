//! The Penn Treebank tokenisation pycocoevalcap applies before CIDEr: its
//! `PTBTokenizer` runs Stanford CoreNLP 3.4.1's
//! `edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase` over
//! the captions (one per line), then drops the punctuation tokens of its
//! `PUNCTUATIONS` list. This is that tokeniser's behaviour on caption text,
//! without Java: punctuation split off words (`(` as `-LRB-`, `"` as
//! `` `` `` / `''`, a leading `'` as `` ` ``), clitics split (`do n't`,
//! `it 's`, `ca n't`, `can not`, `gon na`), periods kept on abbreviations
//! (`mr.`, `st.`, `u.s.`, initials) and split off other words, numbers such
//! as `1,000`, `3.5`, `10:30` kept whole, and everything lower-cased (so
//! the `-LRB-` of pycocoevalcap's list never matches `-lrb-`, which stays).
//!
//! It is checked token for token against the Java tokeniser on the
//! captions of `eval/tests/data/metrics.json`; CoreNLP's lexer has more
//! rules than captions exercise (rare abbreviations, URLs, emoticons).

/// Tokens pycocoevalcap removes after tokenising.
const PUNCTUATIONS: &[&str] = &[
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Abbreviations that keep their period (lower case, without it).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "rep", "sen", "gov", "lt", "col",
    "capt", "sgt", "mt", "ave", "blvd", "rd", "inc", "co", "corp", "ltd", "vs", "etc", "jan",
    "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
];

/// Abbreviations after which a line-final period is also a sentence end:
/// CoreNLP then emits the period twice (`etc. .`, `u.s. .`).
const SENTENCE_FINAL: &[&str] = &["etc.", "inc.", "co.", "corp.", "ltd.", "u.s."];

/// Words CoreNLP splits in two.
const SPLIT_WORDS: &[(&str, usize)] = &[
    ("cannot", 3),
    ("gonna", 3),
    ("gotta", 3),
    ("wanna", 3),
    ("lemme", 3),
    ("gimme", 3),
    ("'tis", 2),
    ("'twas", 2),
    ("y'all", 2),
];

const CLITICS: &[&str] = &["'s", "'re", "'ve", "'ll", "'d", "'m"];

/// Captions as pycocoevalcap compares them: newlines as spaces, tokenised
/// in one run as its `PTBTokenizer` does (one caption per line; the lexer
/// looks past a line's end at the next line's first word), lower case,
/// punctuation tokens dropped, joined by spaces.
pub fn coco_batch(captions: &[&str]) -> Vec<String> {
    let lines: Vec<String> = captions.iter().map(|c| c.replace('\n', " ")).collect();
    (0..lines.len())
        .map(|i| {
            let after = lines.get(i + 1).and_then(|l| l.split_whitespace().next());
            tokenize_before(&lines[i], after)
                .into_iter()
                .filter(|t| !PUNCTUATIONS.contains(&t.as_str()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// One caption as [`coco_batch`] gives it when it is the last line.
pub fn coco(caption: &str) -> String {
    coco_batch(&[caption]).remove(0)
}

/// The lower-cased PTB tokens of one line.
pub fn tokenize(line: &str) -> Vec<String> {
    tokenize_before(line, None)
}

/// The tokens of `line` where `after` is the first word of the next line.
fn tokenize_before(line: &str, after: Option<&str>) -> Vec<String> {
    let chunks: Vec<&str> = line.split_whitespace().collect();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let ctx = Context {
            next: chunks.get(i + 1).copied(),
            after: if i + 1 == chunks.len() { after } else { None },
        };
        chunk(c, &ctx, &mut out);
    }
    out.into_iter().map(|t| t.to_lowercase()).collect()
}

/// What follows a word: the next word of its line, or (for the line's last
/// word) the first word of the next line.
struct Context<'a> {
    next: Option<&'a str>,
    after: Option<&'a str>,
}

fn bracket(c: char) -> Option<&'static str> {
    Some(match c {
        '(' => "-LRB-",
        ')' => "-RRB-",
        '[' => "-LSB-",
        ']' => "-RSB-",
        '{' => "-LCB-",
        '}' => "-RCB-",
        _ => return None,
    })
}

fn is_clitic(s: &str) -> bool {
    let l = s.to_lowercase();
    CLITICS.contains(&l.as_str()) || l == "n't"
}

/// `w` ending in `.`: an abbreviation that keeps its period.
fn is_abbreviation(w: &str, ctx: &Context) -> bool {
    let l = w.to_lowercase();
    let stem = &l[..l.len() - 1];
    let letters = |s: &str| !s.is_empty() && s.chars().all(char::is_alphabetic);
    if stem.chars().count() == 1 && letters(stem) {
        // an initial, unless a one-letter capital word follows (`A. A`,
        // even on the next line): then a sentence ends there
        let following = ctx.next.or(ctx.after);
        return !following
            .is_some_and(|f| f.chars().count() == 1 && f.chars().all(char::is_uppercase));
    }
    // u.s., e.g., a.m.: single letters with periods
    if stem.contains('.')
        && stem
            .split('.')
            .all(|p| p.chars().count() == 1 && letters(p))
    {
        return true;
    }
    if stem == "no" {
        return ctx
            .next
            .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()));
    }
    ABBREVIATIONS.contains(&stem)
}

fn chunk(w: &str, ctx: &Context, out: &mut Vec<String>) {
    let mut front: Vec<String> = Vec::new();
    let mut back: Vec<String> = Vec::new();
    let mut core = w;
    // leading punctuation
    while let Some(c) = core.chars().next() {
        if core.starts_with("``") {
            front.push("``".into());
            core = &core[2..];
        } else if core.starts_with("...") {
            front.push("...".into());
            core = core.trim_start_matches('.');
        } else if core.starts_with("--") {
            front.push("--".into());
            core = &core[2..];
        } else if c == '"' {
            front.push("``".into());
            core = &core[1..];
        } else if let Some(b) = bracket(c) {
            front.push(b.into());
            core = &core[1..];
        } else if matches!(c, '$' | '#' | '`' | ',' | ';' | ':' | '=' | '\\') {
            front.push(c.to_string());
            core = &core[1..];
        } else if c == '\'' && core.len() > 1 {
            let rest = &core[1..];
            let clitic = is_clitic(core) || SPLIT_WORDS.iter().any(|(s, _)| *s == core);
            if clitic || rest.starts_with(|c: char| c.is_ascii_digit()) || rest.starts_with("n'") {
                break;
            }
            front.push("`".into());
            core = rest;
        } else {
            break;
        }
    }
    // trailing punctuation
    while let Some(c) = core.chars().last() {
        let cut = core.len() - c.len_utf8();
        if core.ends_with("...") {
            back.push("...".into());
            core = core.trim_end_matches('.');
        } else if core.ends_with("--") {
            back.push("--".into());
            core = &core[..core.len() - 2];
        } else if core.ends_with("''") {
            back.push("''".into());
            core = &core[..core.len() - 2];
        } else if c == '"' {
            back.push("''".into());
            core = &core[..cut];
        } else if let Some(b) = bracket(c) {
            back.push(b.into());
            core = &core[..cut];
        } else if matches!(c, ',' | ';' | ':' | '?' | '!' | '%' | '=' | '\\') {
            back.push(c.to_string());
            core = &core[..cut];
        } else if c == '\'' && cut > 0 && !is_clitic(core) && !core.ends_with("n'") {
            back.push("'".into());
            core = &core[..cut];
        } else if c == '.' && cut > 0 {
            if is_abbreviation(core, ctx) {
                // a sentence end too, when it ends the line
                if back.is_empty()
                    && ctx.next.is_none()
                    && SENTENCE_FINAL.contains(&core.to_lowercase().as_str())
                {
                    back.push(".".into());
                }
                break;
            }
            back.push(".".into());
            core = &core[..cut];
        } else {
            break;
        }
    }
    out.extend(front);
    if !core.is_empty() {
        inner(core, out);
    }
    out.extend(back.into_iter().rev());
}

/// A word without its outer punctuation: inner separators, clitics.
fn inner(w: &str, out: &mut Vec<String>) {
    // `--` and separators between non-digits split the word
    if let Some(i) = w.find("--") {
        if i > 0 {
            inner(&w[..i], out);
        }
        out.push("--".into());
        let rest = &w[i + 2..];
        if !rest.is_empty() {
            inner(rest, out);
        }
        return;
    }
    let b = w.as_bytes();
    for (i, c) in w.char_indices() {
        let at = |s: &str, out: &mut Vec<String>| {
            if !s.is_empty() {
                inner(s, out);
            }
        };
        if let Some(t) = bracket(c) {
            at(&w[..i], out);
            out.push(t.into());
            at(&w[i + 1..], out);
            return;
        }
        if !matches!(c, ',' | ';' | ':' | '=' | '\\') || i == 0 || i + 1 == b.len() {
            continue;
        }
        let digits = b[i - 1].is_ascii_digit() && b[i + 1].is_ascii_digit();
        if matches!(c, ',' | ':') && digits {
            continue;
        }
        at(&w[..i], out);
        out.push(c.to_string());
        at(&w[i + 1..], out);
        return;
    }
    clitics(w, out);
}

fn clitics(w: &str, out: &mut Vec<String>) {
    let l = w.to_lowercase();
    if let Some((_, at)) = SPLIT_WORDS.iter().find(|(s, _)| *s == l) {
        out.push(w[..*at].into());
        out.push(w[*at..].into());
        return;
    }
    if let Some(i) = l.find("'n'") {
        if i > 0 && i + 3 < l.len() {
            out.push(w[..i].into());
            out.push(w[i..i + 3].into());
            out.push(w[i + 3..].into());
            return;
        }
    }
    for c in CLITICS {
        if l.len() > c.len() && l.ends_with(c) {
            clitics(&w[..w.len() - c.len()], out);
            out.push(w[w.len() - c.len()..].into());
            return;
        }
    }
    if l.len() > 3 && l.ends_with("n't") {
        out.push(w[..w.len() - 3].into());
        out.push(w[w.len() - 3..].into());
        return;
    }
    out.push(w.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines and what CoreNLP 3.4.1's PTBTokenizer (-preserveLines
    /// -lowerCase) printed for them.
    #[test]
    fn tokens_match_corenlp() {
        let cases = [
            ("U.S. at the end is U.S.", "u.s. at the end is u.s. ."),
            (
                "Mr. Smith went to St. Louis.",
                "mr. smith went to st. louis .",
            ),
            (
                "he said \"hi\" and `quote' (a) [b] {c}",
                "he said `` hi '' and ` quote ' -lrb- a -rrb- -lsb- b -rsb- -lcb- c -rcb-",
            ),
            (
                "it's 5% of $10 & a/b 10:30 O'Neil",
                "it 's 5 % of $ 10 & a/b 10:30 o'neil",
            ),
            ("cannot gonna wanna Dogs", "can not gon na wan na dogs"),
            (
                "A man... on -- a e-mail t-shirt 1,000 3.5 children's isn't",
                "a man ... on -- a e-mail t-shirt 1,000 3.5 children 's is n't",
            ),
            ("hello.world end.", "hello.world end ."),
            (
                "mr.. U.S.. 'small'. (blue).",
                "mr. . u.s. . ` small ' . -lrb- blue -rrb- .",
            ),
            (
                "a,b x;y a:b a?b (a)b",
                "a , b x ; y a : b a?b -lrb- a -rrb- b",
            ),
            (
                "dogs' '90s rock'n'roll won't",
                "dogs ' '90s rock 'n' roll wo n't",
            ),
            (
                "can't've y'all ma'am ain't",
                "ca n't 've y' all ma'am ai n't",
            ),
            ("etc. no. 5 No.", "etc. no. 5 no ."),
            ("x. y A.", "x. y a."),
            ("A.", "a."),
            ("x A. A b", "x a . a b"),
            ("a=b back\\slash x_y a--b", "a = b back \\ slash x_y a -- b"),
        ];
        for (line, want) in cases {
            assert_eq!(tokenize(line).join(" "), want, "{line}");
        }
    }
}
