"""The Kafka/Faust adapter: the Faust app and transport, the sink, the producer helper, topic admin,
Kafka tools and the Faust sensor."""
