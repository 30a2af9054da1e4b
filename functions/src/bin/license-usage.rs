//! Lambda function for the route `LicenseUsage` of the core's route table.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    seatkeeper_functions::serve(seatkeeper_core::http::Op::LicenseUsage).await
}
