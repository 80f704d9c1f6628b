//! Perplexity.
