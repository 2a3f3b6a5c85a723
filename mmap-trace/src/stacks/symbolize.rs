//! File offsets to function names (and file:line where debug info exists) with
//! blazesym, which keeps each file's parsed symbols; answers are cached per (file,
//! offset) so a hot call site costs one lookup.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

#[derive(Clone, Debug, Default)]
pub struct Symbol {
    pub name: String,
    /// Source file and line, from DWARF.
    pub src: Option<String>,
    pub line: Option<u32>,
}

pub struct Names {
    symbolizer: Symbolizer,
    cache: HashMap<(Arc<str>, u64), Option<Symbol>>,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            symbolizer: Symbolizer::new(),
            cache: HashMap::new(),
        }
    }
}

impl Names {
    /// The function at `offset` in the file at `path`. None for a stripped file, a
    /// deleted or replaced one, JIT memory: never an error.
    pub fn lookup(&mut self, path: &Arc<str>, offset: u64) -> Option<Symbol> {
        let key = (path.clone(), offset);
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let src = Source::Elf(Elf::new(PathBuf::from(&**path)));
        let symbol = match self
            .symbolizer
            .symbolize(&src, Input::FileOffset(&[offset]))
        {
            Ok(results) => match results.into_iter().next() {
                Some(Symbolized::Sym(sym)) => Some(Symbol {
                    name: sym.name.into_owned(),
                    src: sym.code_info.as_ref().map(|c| {
                        let file = std::path::Path::new(&c.file);
                        match &c.dir {
                            Some(dir) => dir.join(file).display().to_string(),
                            None => file.display().to_string(),
                        }
                    }),
                    line: sym.code_info.as_ref().and_then(|c| c.line),
                }),
                _ => None,
            },
            Err(e) => {
                log::debug!("no symbols for {path}+{offset:#x}: {e}");
                None
            }
        };
        self.cache.insert(key, symbol.clone());
        symbol
    }
}
