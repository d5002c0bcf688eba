-- Sends recorded in the warehouse (the sample's message_sends table stands in for Customer.io's
-- data-out export). Must return event_id, metric, channel, occurred_at, customer_id, delivery_id and
-- campaign_id; rows whose occurred_at falls in the window (start, end) are loaded.
SELECT delivery_id || '-sent' AS event_id,
       'sent' AS metric,
       channel,
       sent_at AS occurred_at,
       customer_id,
       delivery_id,
       campaign_id,
       'Campaign ' || campaign_id AS campaign_name
FROM message_sends
WHERE sent_at >= :start
  AND sent_at < :end
