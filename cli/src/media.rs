//! `--image` / `--video` arguments in command-line order.

use std::path::PathBuf;

use flamingo_runtime::Media;

/// clap keeps each flag's values apart; the raw arguments tell how `--image`
/// and `--video` interleave, which is the media order of the prompt.
pub fn in_order(images: &[PathBuf], videos: &[String]) -> Vec<Media> {
    let mut images = images.iter();
    let mut videos = videos.iter();
    let mut out = Vec::new();
    // args_os: a path need not be UTF-8
    for arg in std::env::args_os() {
        let arg = arg.to_string_lossy();
        let flag = arg.split('=').next().unwrap_or("");
        if flag == "--image" {
            if let Some(p) = images.next() {
                out.push(Media::Image(p.clone()));
            }
        } else if flag == "--video" {
            if let Some(v) = videos.next() {
                out.push(Media::Video(frames(v)));
            }
        }
    }
    // anything not seen in argv (e.g. called programmatically) keeps flag order
    out.extend(images.map(|p| Media::Image(p.clone())));
    out.extend(videos.map(|v| Media::Video(frames(v))));
    out
}

fn frames(v: &str) -> Vec<PathBuf> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}
