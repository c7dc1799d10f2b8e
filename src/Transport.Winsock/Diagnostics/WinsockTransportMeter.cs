using System.Diagnostics.Metrics;

namespace Transport.Winsock.Diagnostics;

/// <summary>
/// The transport's <see cref="System.Diagnostics.Metrics"/> meter, <c>Transport.Winsock</c> (for
/// dotnet-counters and OpenTelemetry), named in the style of Kestrel's <c>kestrel.*</c> instruments.
/// The observable instruments read <see cref="WinsockTransportCounters"/>, so there is one set of numbers;
/// the disconnect duration is the one measurement recorded as it happens.
/// </summary>
internal sealed class WinsockTransportMeter : IDisposable
{
    public const string MeterName = "Transport.Winsock";

    private readonly Meter _meter;

    public WinsockTransportMeter(WinsockTransportCounters counters, IMeterFactory? meterFactory = null)
    {
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        var c = counters;

        _meter.CreateObservableCounter("winsock.connections.accepted", () => c.ConnectionsAccepted, "{connection}",
            "Connections accepted and handed to the server.");
        _meter.CreateObservableCounter("winsock.sockets.accepted_into", () => new[]
        {
            new Measurement<long>(c.SocketsCreated, new KeyValuePair<string, object?>("winsock.socket.origin", "created")),
            new Measurement<long>(c.SocketsReused, new KeyValuePair<string, object?>("winsock.socket.origin", "reused")),
        }, "{socket}", "Sockets accepted into: new ones, and ones recycled from earlier connections.");
        _meter.CreateObservableUpDownCounter("winsock.sockets.pooled", () => c.PooledSockets, "{socket}",
            "Recycled sockets waiting in the pools.");
        _meter.CreateObservableUpDownCounter("winsock.sockets.disconnecting", () => c.PendingDisconnects, "{socket}",
            "Sockets in a reuse disconnect.");
        _meter.CreateObservableCounter("winsock.connection.closes", () => new[]
        {
            new Measurement<long>(c.GracefulCloses, new KeyValuePair<string, object?>("winsock.close.kind", "graceful")),
            new Measurement<long>(c.AbortiveCloses, new KeyValuePair<string, object?>("winsock.close.kind", "abortive")),
            new Measurement<long>(c.ConnectionResets, new KeyValuePair<string, object?>("winsock.close.kind", "peer_reset")),
            new Measurement<long>(c.DrainTimeouts, new KeyValuePair<string, object?>("winsock.close.kind", "drain_timeout")),
            new Measurement<long>(c.TimeWaitCloses, new KeyValuePair<string, object?>("winsock.close.kind", "time_wait")),
        }, "{connection}", "How connections ended: a FIN from us (graceful), an RST from us, a reset by the peer. drain_timeout (no FIN from the peer in time) and time_wait (FINs both ways, ours first: TIME_WAIT here, so the socket was closed, not recycled) are parts of graceful, not added to it.");
        _meter.CreateObservableCounter("winsock.reuse.disconnects", () => c.ReuseDisconnects, "{socket}",
            "Reuse disconnects started: the sockets of passive closes, handed to DisconnectEx(TF_REUSE_SOCKET).");
        _meter.CreateObservableCounter("winsock.reuse.accept_failures", () => c.RecycledAcceptFailures, "{socket}",
            "Accepts into recycled sockets that failed as if the socket had not been recycled; each counts toward the reuse fallback.");
        _meter.CreateObservableCounter("winsock.disconnect.failures", () => new[]
        {
            new Measurement<long>(c.DisconnectFailures, new KeyValuePair<string, object?>("error.type", "failed")),
            new Measurement<long>(c.DisconnectTimeouts, new KeyValuePair<string, object?>("error.type", "timeout")),
        }, "{socket}", "Reuse disconnects that failed or timed out; their sockets were closed.");
        _meter.CreateObservableCounter("winsock.fin.deferred", () => new[]
        {
            new Measurement<long>(c.PeerClosedFirst, new KeyValuePair<string, object?>("winsock.fin.outcome", "peer_closed_first")),
            new Measurement<long>(c.DeferFinTimeouts, new KeyValuePair<string, object?>("winsock.fin.outcome", "timeout")),
        }, "{connection}", "With a deferred FIN: connections whose peer closed first, and ones whose FIN went out first after the deferral.");
        _meter.CreateObservableCounter("winsock.accept.pauses", () => c.AcceptPauses, "{pause}",
            "Times a listener paused accepting: out of descriptors or buffers, or at the descriptor reserve.");
        _meter.CreateObservableCounter("winsock.accept.paused_time", () => c.AcceptPausedTime.TotalSeconds, "s",
            "Time listeners spent paused, in pauses that have ended.");
        _meter.CreateObservableUpDownCounter("winsock.listeners.paused", () => c.ListenersPaused, "{listener}",
            "Listeners whose accepting is paused now.");
        _meter.CreateObservableGauge("winsock.reuse.active", () => c.ReuseActive ? 1 : 0, "{listener}",
            "1 while the most recently started listener recycles sockets, 0 when reuse is off or fell back.");

        _meter.CreateObservableGauge("winsock.engine", () => new Measurement<int>(1, new KeyValuePair<string, object?>("winsock.engine.name", c.Engine == WinsockEngine.IoUring ? "io_uring" : "sockets")), "{listener}",
            "1, tagged with the I/O engine of the most recently started listener (winsock.engine.name: io_uring or sockets).");

        counters.DisconnectDuration = _meter.CreateHistogram<double>("winsock.disconnect.duration", "s",
            "How long reuse disconnects took, by outcome.",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30] });
    }

    public void Dispose() => _meter.Dispose();
}
