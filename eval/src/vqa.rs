//! VQA accuracy as open_flamingo 2.0.1's `vqa_metric.py` (`VQAEval`)
//! computes it: answers normalised (punctuation, number words, articles,
//! contractions), then for each of the human answers `min(1, matches among
//! the other answers / 3)`, averaged.
//!
//! The reference's quirks are kept: a `.` is removed only when no digit
//! follows and at most 32 times (it passes `re.UNICODE` as the count of
//! `re.sub`), and punctuation is deleted rather than spaced whenever the
//! text holds a `digit,digit` anywhere.

use std::sync::LazyLock;

use regex::Regex;

const PUNCT: &[&str] = &[
    ";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
];

const ARTICLES: &[&str] = &["a", "an", "the"];

const NUMBERS: &[(&str, &str)] = &[
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// `VQAEval.contractions`, as the reference has it (`somebody'd` maps to
/// `somebodyd` there too).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

static COMMA_BETWEEN_DIGITS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d,\d").expect("a valid pattern"));
static DIGIT_FIRST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d").expect("a valid pattern"));

/// Python's `str.isspace` (Unicode White_Space plus the information
/// separators U+001C..U+001F), what `split()` and `strip()` split on.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `processPunctuation`.
pub fn process_punctuation(text: &str) -> String {
    let digits_comma = COMMA_BETWEEN_DIGITS.is_match(text);
    let mut out = text.to_string();
    for p in PUNCT {
        let spaced = text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = out.replace(p, if spaced || digits_comma { "" } else { " " });
    }
    // `(?!<=\d)(\.)(?!\d)`: the first look-ahead always holds at a `.`
    let mut s = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, c) in out.char_indices() {
        if c == '.' && removed < 32 && !DIGIT_FIRST.is_match(&out[i + 1..]) {
            removed += 1;
            continue;
        }
        s.push(c);
    }
    s
}

/// `processDigitArticle`: lower case, number words to digits, articles
/// dropped, contractions restored.
pub fn process_digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(py_space)
        .filter(|w| !w.is_empty())
        .map(|w| NUMBERS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| *v))
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .collect();
    words.join(" ")
}

/// An answer as `VQAEval.evaluate` compares it: newlines and tabs to
/// spaces, stripped, then both normalisations.
pub fn normalize(answer: &str) -> String {
    let a = answer.replace(['\n', '\t'], " ");
    process_digit_article(&process_punctuation(a.trim_matches(py_space)))
}

/// The accuracy (0..=1) of `prediction` against the human `answers` (ten in
/// VQAv2): the mean over each answer left out of `min(1, matches / 3)`.
/// No answers gives 0.
pub fn accuracy(prediction: &str, answers: &[String]) -> f64 {
    let pred = normalize(prediction);
    let gts: Vec<String> = answers.iter().map(|a| normalize(a)).collect();
    if gts.is_empty() {
        return 0.0;
    }
    let matching = gts.iter().filter(|g| **g == pred).count();
    let sum: f64 = gts
        .iter()
        .map(|g| {
            // the others: every answer but this one
            let m = matching - usize::from(*g == pred);
            (m as f64 / 3.0).min(1.0)
        })
        .sum();
    sum / gts.len() as f64
}

/// VQA accuracy in percent over questions (`VQAEval`'s overall, before
/// its rounding to two decimals): each item a prediction and its answers.
pub fn overall<'a>(items: impl IntoIterator<Item = (&'a str, &'a [String])>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (p, a) in items {
        sum += accuracy(p, a);
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        100.0 * sum / n as f64
    }
}
