//! Prompt templates. The reference recipe builds its prompt in Python with `str.strip()`, so
//! the same whitespace rule (Python's `str.isspace`, which is wider than Rust's `trim`) is used.

/// Python's `str.strip()` with no argument.
pub fn python_strip(text: &str) -> &str {
    text.trim_matches(python_isspace)
}

/// Python's `str.isspace` for one character: Unicode whitespace (`White_Space`) plus the
/// information separators U+001C..U+001F, which Python counts and Rust does not.
pub fn python_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The reference recipe's inference prompt: `"Human: {prompt}\n".strip() + "\n\nAssistant: "`.
pub fn human_assistant(prompt: &str) -> String {
    format!("{}\n\nAssistant: ", python_strip(&format!("Human: {prompt}\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_follows_python() {
        assert_eq!(python_strip("\u{1f} a b\u{3000}\n"), "a b");
        assert_eq!(human_assistant("你好 "), "Human: 你好\n\nAssistant: ");
    }
}
