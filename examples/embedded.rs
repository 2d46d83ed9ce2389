// placeholder: replaced by the issue that builds this example
fn main() {}
