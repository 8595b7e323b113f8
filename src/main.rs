/// mimalloc: the request path allocates and frees many small buffers per request, and glibc's
/// malloc showed as a sixth of gatehouse's user-space CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
