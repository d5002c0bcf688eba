-- Got a cart-recovery message (campaign 101) in the last 12 hours (exposed_since .. as_of): a
-- suppression for retargeting that expires by itself, with the latest exposure per person.
SELECT s.customer_id, c.email, c.phone, MAX(s.occurred_at) AS message_exposed_at
FROM cio_send_log s
JOIN customers c ON c.customer_id = s.customer_id
WHERE s.campaign_id = 101
  AND s.status IN ('sent', 'delivered')
  AND s.occurred_at >= :exposed_since
  AND s.occurred_at <= :as_of
GROUP BY s.customer_id, c.email, c.phone
