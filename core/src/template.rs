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
    Template::HumanAssistant.prompt(prompt, "")
}

/// How an instruction and its optional input become the prompt the model is trained on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Template {
    /// The reference recipe: `("Human: " + instruction + "\n" + input).strip() + "\n\nAssistant: "`.
    HumanAssistant,
    /// Stanford Alpaca's prompt (with its no-input variant).
    Alpaca,
    /// A user's template with `{instruction}` and `{input}` placeholders, used as written.
    Custom(String),
}

impl Template {
    /// `human-assistant`, `alpaca`, or a template string containing `{instruction}`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "human-assistant" => Ok(Template::HumanAssistant),
            "alpaca" => Ok(Template::Alpaca),
            t if t.contains("{instruction}") => Ok(Template::Custom(t.to_owned())),
            t => Err(format!("unknown template \"{t}\": use human-assistant, alpaca, or a string with {{instruction}} (and {{input}})")),
        }
    }

    pub fn prompt(&self, instruction: &str, input: &str) -> String {
        match self {
            Template::HumanAssistant => {
                format!("{}\n\nAssistant: ", python_strip(&format!("Human: {instruction}\n{input}")))
            }
            Template::Alpaca if input.is_empty() => format!(
                "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
            ),
            Template::Alpaca => format!(
                "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
            ),
            Template::Custom(t) => t.replace("{instruction}", instruction).replace("{input}", input),
        }
    }
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
