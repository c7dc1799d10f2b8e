using System.Diagnostics.Metrics;
using Transport.Winsock.Diagnostics;

namespace Transport.Winsock.Outbound;

/// <summary>
/// The outbound side's instruments, <c>winsock.outbound.*</c> on the transport's meter
/// (<c>Transport.Winsock</c>), read from <see cref="WinsockOutboundCounters"/> as the listener's are from its counters.
/// </summary>
internal sealed class WinsockOutboundMeter : IDisposable
{
    private readonly Meter _meter;

    public WinsockOutboundMeter(WinsockOutboundCounters counters, IMeterFactory? meterFactory)
    {
        _meter = meterFactory?.Create(WinsockTransportMeter.MeterName) ?? new Meter(WinsockTransportMeter.MeterName);
        var c = counters;
        _meter.CreateObservableCounter("winsock.outbound.connects", () => new[]
        {
            new Measurement<long>(c.Connects, new KeyValuePair<string, object?>("winsock.connect.outcome", "connected")),
            new Measurement<long>(c.ConnectFailures, new KeyValuePair<string, object?>("winsock.connect.outcome", "failed")),
        }, "{connect}", "Outbound connects: connected, or failed (refused, timed out, unreachable, canceled, unresolved).");
        _meter.CreateObservableCounter("winsock.outbound.sockets", () => new[]
        {
            new Measurement<long>(c.SocketsCreated, new KeyValuePair<string, object?>("winsock.socket.origin", "created")),
            new Measurement<long>(c.SocketsReused, new KeyValuePair<string, object?>("winsock.socket.origin", "reused")),
        }, "{socket}", "Sockets outbound connections ran on: new ones, and ones recycled from earlier connections.");
        _meter.CreateObservableUpDownCounter("winsock.outbound.sockets.pooled", () => c.PooledSockets, "{socket}",
            "Recycled outbound sockets waiting for a connect.");
        _meter.CreateObservableUpDownCounter("winsock.outbound.sockets.disconnecting", () => c.PendingDisconnects, "{socket}",
            "Outbound sockets in a reuse disconnect, on their way to the pool.");
        _meter.CreateObservableCounter("winsock.outbound.closes", () => new[]
        {
            new Measurement<long>(c.GracefulCloses, new KeyValuePair<string, object?>("winsock.close.kind", "graceful")),
            new Measurement<long>(c.AbortiveCloses, new KeyValuePair<string, object?>("winsock.close.kind", "abortive")),
            new Measurement<long>(c.ConnectionResets, new KeyValuePair<string, object?>("winsock.close.kind", "peer_reset")),
            new Measurement<long>(c.TimeWaitCloses, new KeyValuePair<string, object?>("winsock.close.kind", "time_wait")),
        }, "{connection}", "How outbound connections ended. time_wait (this side's FIN went first, so the TIME_WAIT and its port stay on the client) is part of graceful.");
        _meter.CreateObservableCounter("winsock.outbound.fin.deferred", () => new[]
        {
            new Measurement<long>(c.PeerClosedFirst, new KeyValuePair<string, object?>("winsock.fin.outcome", "peer_closed_first")),
            new Measurement<long>(c.DeferFinTimeouts, new KeyValuePair<string, object?>("winsock.fin.outcome", "timeout")),
        }, "{connection}", "Client-side deferred FINs: the server closed first (no TIME_WAIT here), or the wait ran out and the client's FIN went first.");
    }

    public void Dispose() => _meter.Dispose();
}
