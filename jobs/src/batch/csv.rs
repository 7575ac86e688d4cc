//! A small reader for CSV as RFC 4180 describes it: fields separated by commas, records by
//! CRLF or LF, a field in double quotes may hold commas, line breaks and `""` for a quote.
//! Every field keeps the line and column (1-based, in characters) where it starts, so a batch
//! error can point at the cell.

/// One cell and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub text: String,
    pub line: usize,
    pub column: usize,
}

/// One record: its cells, and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub line: usize,
    pub fields: Vec<Field>,
}

/// Where the text stops being CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CsvError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Splits `text` into records. Blank lines between records are skipped; a trailing line break
/// ends the last record without starting another.
pub(crate) fn read_records(text: &str) -> Result<Vec<Record>, CsvError> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut column) = (1usize, 1usize);
    let mut fields: Vec<Field> = Vec::new();
    let mut record_line = 1;
    loop {
        // At the start of a field.
        let (start_line, start_column) = (line, column);
        let mut value = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            column += 1;
            loop {
                match chars.next() {
                    None => {
                        return Err(CsvError {
                            line: start_line,
                            column: start_column,
                            message: "a quoted field is never closed (a `\"` is missing)".into(),
                        })
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        column += 2;
                        value.push('"');
                    }
                    Some('"') => {
                        column += 1;
                        break;
                    }
                    Some('\n') => {
                        line += 1;
                        column = 1;
                        value.push('\n');
                    }
                    Some(c) => {
                        column += 1;
                        value.push(c);
                    }
                }
            }
            // Only a separator or the end of the record may follow the closing quote.
            if chars.peek() == Some(&'\r') {
                chars.next();
                column += 1;
            }
            match chars.peek() {
                None | Some(',') | Some('\n') => {}
                Some(_) => {
                    return Err(CsvError {
                        line,
                        column,
                        message: "text after a closing quote; put the whole field in quotes and double each `\"` inside it".into(),
                    })
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c == '\n' {
                    break;
                }
                chars.next();
                column += 1;
                if c == '"' {
                    return Err(CsvError {
                        line,
                        column: column - 1,
                        message: "a `\"` inside a field that does not start with one; quote the whole field and write `\"\"` for each quote".into(),
                    });
                }
                value.push(c);
            }
            if value.ends_with('\r') {
                value.pop();
            }
        }
        fields.push(Field {
            text: value,
            line: start_line,
            column: start_column,
        });
        match chars.next() {
            Some(',') => column += 1,
            Some('\n') | None => {
                let end = chars.peek().is_none();
                let blank = fields.len() == 1 && fields[0].text.is_empty() && !quoted;
                if !blank {
                    records.push(Record {
                        line: record_line,
                        fields: std::mem::take(&mut fields),
                    });
                } else {
                    fields.clear();
                }
                if end {
                    return Ok(records);
                }
                line += 1;
                column = 1;
                record_line = line;
            }
            Some(other) => {
                unreachable!("a field ends at `,`, a line break or the end, not {other:?}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(records: &[Record]) -> Vec<Vec<&str>> {
        records
            .iter()
            .map(|r| r.fields.iter().map(|f| f.text.as_str()).collect())
            .collect()
    }

    #[test]
    fn quoted_fields_hold_commas_quotes_and_line_breaks() {
        let text = "a,b\r\n\"x, y\",\"say \"\"hi\"\"\"\n\"two\nlines\",z\n";
        let records = read_records(text).expect("valid CSV");
        assert_eq!(
            texts(&records),
            vec![
                vec!["a", "b"],
                vec!["x, y", "say \"hi\""],
                vec!["two\nlines", "z"]
            ]
        );
        assert_eq!(records[2].line, 3);
        assert_eq!(
            (records[2].fields[1].line, records[2].fields[1].column),
            (4, 8)
        );
    }

    #[test]
    fn blank_lines_are_skipped_and_positions_kept() {
        let records = read_records("h1,h2\n\nv1,v2").expect("valid CSV");
        assert_eq!(texts(&records), vec![vec!["h1", "h2"], vec!["v1", "v2"]]);
        assert_eq!(records[1].line, 3);
        assert_eq!(records[1].fields[1].column, 4);
    }

    #[test]
    fn an_unclosed_quote_is_reported_where_it_opens() {
        let err = read_records("a,b\nx,\"open\n").expect_err("unclosed");
        assert_eq!((err.line, err.column), (2, 3));
    }

    #[test]
    fn a_stray_quote_is_refused() {
        let err = read_records("a,b\"c\n").expect_err("stray quote");
        assert_eq!((err.line, err.column), (1, 4));
    }
}
