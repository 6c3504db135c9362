include!("../build-support/libtorch_link.rs");

fn main() {
    libtorch_link();
}
