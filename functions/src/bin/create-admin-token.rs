//! Lambda function for the route `CreateAdminToken` of the core's route table.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    seatkeeper_functions::serve(seatkeeper_core::http::Op::CreateAdminToken).await
}
