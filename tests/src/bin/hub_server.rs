//! The imitation Hub of the tests, as a process: prints its endpoint, then serves the standard
//! repos until killed. The fixture script points huggingface_hub's own client at it.

fn main() {
    let server = ember_tests::hub_server::HubServer::start();
    ember_tests::hub_server::standard_repos(&server);
    println!("{}", server.endpoint);
    loop {
        std::thread::park();
    }
}
