//! Training examples typed or uploaded into the page: a JSON array or JSON lines of
//! instruction/input/output records, read by ember-core's own dataset reader. The page uses it
//! to validate as the user types; the worker to train.

use std::io::Cursor;
use std::path::Path;

use ember_core::data::formats::{examples_from_reader, Example};
use ember_core::data::Columns;
use ember_core::Result;

/// Every example of `text`, or the first problem (naming the line or record).
pub fn parse(text: &str) -> Result<Vec<Example>> {
    // The reader picks the format from the name: a leading `[` is a JSON array.
    let origin = if text.trim_start().starts_with('[') { "examples.json" } else { "examples.jsonl" };
    let examples = examples_from_reader(Path::new(origin), Cursor::new(text.as_bytes().to_vec()), &Columns::default())?;
    let examples = examples.collect::<Result<Vec<_>>>()?;
    if examples.is_empty() {
        return Err(ember_core::Error::invalid(
            "no examples: paste JSON lines like {\"instruction\": \"…\", \"input\": \"\", \"output\": \"…\"}",
        ));
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_json_lines_and_json_arrays_and_names_bad_records() {
        let lines = "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"output\": \"d\"}\n";
        assert_eq!(parse(lines).unwrap().len(), 2);
        let array = " [{\"instruction\": \"a\", \"input\": \"x\", \"output\": \"b\"}]";
        assert_eq!(parse(array).unwrap()[0].input, "x");
        let missing = parse("{\"instruction\": \"a\"}").unwrap_err().to_string();
        assert!(missing.contains("output"), "{missing}");
        assert!(parse("{not json").is_err());
        assert!(parse("  \n").unwrap_err().to_string().contains("no examples"));
    }
}
